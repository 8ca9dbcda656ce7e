//! Connection ids of the admin APIs (RFC 6897 CONNID), the same for both daemons: a connection carried over
//! MPTCP is named by its MPTCP token as 8 lowercase hex digits (`"1a2b3c4d"`, the form the logs' `token` field
//! uses; `0x` and upper case are accepted in paths); one without a token (plain TCP, fallen back, or not yet
//! past connect/accept) is `tcp-<n>`, `n` being the daemon's own sequence number of the connection.
//!
//! Invariant: `ConnId::parse(&id.to_string()) == Some(id)` for every id.

use std::fmt;
use std::sync::Arc;

use super::ApiError;
use super::table::Table;

/// An item of a [`Table`] named by a [`ConnId`].
pub trait HasConnId {
    /// Its id as the API shows it.
    fn conn_id(&self) -> ConnId;
}

/// A connection id (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnId {
    /// MPTCP token.
    Token(u32),
    /// The daemon's sequence number of a connection without a token.
    Seq(u64),
}

impl ConnId {
    /// The id of a connection with this token state (`None`: not known yet; `Some(None)`: plain TCP) and
    /// sequence number.
    pub fn new(token: Option<&Option<u32>>, seq: u64) -> ConnId {
        match token {
            Some(Some(t)) => ConnId::Token(*t),
            _ => ConnId::Seq(seq),
        }
    }

    /// Parses `1a2b3c4d`, `0x1A2B3C4D` or `tcp-7`.
    pub fn parse(s: &str) -> Option<ConnId> {
        if let Some(n) = s.strip_prefix("tcp-") {
            return (!n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
                .then(|| n.parse().ok().map(ConnId::Seq))
                .flatten();
        }
        let hex = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")).unwrap_or(s);
        if hex.is_empty() || hex.len() > 8 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        u32::from_str_radix(hex, 16).ok().map(ConnId::Token)
    }

    /// [`ConnId::parse`], with the API's 400 error for an id that does not parse.
    pub fn parse_path(raw: &str) -> Result<ConnId, ApiError> {
        ConnId::parse(raw).ok_or_else(|| {
            ApiError::bad_request(format!(
                "connection id {raw:?} is neither an MPTCP token (8 hex digits) nor tcp-<number>"
            ))
        })
    }
}

/// The `{id}` path parameter of the connection routes, as the OpenAPI documents describe it (the handlers
/// read it with [`ConnId::parse_path`], whose grammar the pattern repeats).
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
pub struct ConnIdPath {
    /// The connection's MPTCP token as 8 hex digits (`0x` prefix accepted; on hcpe the local token of its
    /// connection to hag), or `tcp-<n>` for a connection without one.
    #[param(pattern = r"^((0[xX])?[0-9a-fA-F]{1,8}|tcp-[0-9]+)$")]
    pub id: String,
}

impl<T: HasConnId> Table<T> {
    /// The open item named `id`.
    pub fn by_conn_id(&self, id: ConnId) -> Option<Arc<T>> {
        match id {
            ConnId::Seq(n) => self.get(n).filter(|c| c.conn_id() == id),
            ConnId::Token(_) => self.find(|c| c.conn_id() == id),
        }
    }

    /// The open item named by the path segment `raw`: 400 when it is no id, 404 when nothing open has it.
    pub fn by_path(&self, raw: &str) -> Result<Arc<T>, ApiError> {
        let id = ConnId::parse_path(raw)?;
        self.by_conn_id(id).ok_or_else(|| ApiError::not_found(format!("no connection {id}")))
    }
}

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConnId::Token(t) => write!(f, "{t:08x}"),
            ConnId::Seq(n) => write!(f, "tcp-{n}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_ids_parse_and_print() {
        assert_eq!(ConnId::parse("1a2b3c4d"), Some(ConnId::Token(0x1a2b_3c4d)));
        assert_eq!(ConnId::parse("0x1A2B3C4D"), Some(ConnId::Token(0x1a2b_3c4d)));
        assert_eq!(ConnId::parse("ff"), Some(ConnId::Token(0xff)));
        assert_eq!(ConnId::parse("tcp-17"), Some(ConnId::Seq(17)));
        for bad in ["", "0x", "123456789", "xyz", "tcp-", "tcp--1", "tcp-1a", "-1", "1a2b 3c"] {
            assert_eq!(ConnId::parse(bad), None, "{bad:?}");
            assert!(ConnId::parse_path(bad).is_err());
        }
        assert_eq!(ConnId::Token(0xff).to_string(), "000000ff");
        assert_eq!(ConnId::parse(&ConnId::Token(7).to_string()), Some(ConnId::Token(7)));
        assert_eq!(ConnId::Seq(3).to_string(), "tcp-3");
    }

    #[test]
    fn the_token_names_a_connection_once_known() {
        assert_eq!(ConnId::new(Some(&Some(9)), 4), ConnId::Token(9));
        assert_eq!(ConnId::new(Some(&None), 4), ConnId::Seq(4), "plain TCP");
        assert_eq!(ConnId::new(None, 4), ConnId::Seq(4), "not known yet");
    }

    struct Conn(Option<Option<u32>>, u64);
    impl HasConnId for Conn {
        fn conn_id(&self) -> ConnId {
            ConnId::new(self.0.as_ref(), self.1)
        }
    }

    #[test]
    fn paths_find_connections_by_token_or_by_number_without_one() {
        let t = Table::default();
        let _a = t.insert(|seq| Conn(Some(Some(0x1a2b)), seq));
        let _b = t.insert(|seq| Conn(Some(None), seq));
        assert_eq!(t.by_path("00001a2b").map(|c| c.1).ok(), Some(0));
        assert_eq!(t.by_path("tcp-1").map(|c| c.1).ok(), Some(1));
        let status = |r: Result<Arc<Conn>, ApiError>| r.err().map(|e| e.status.as_u16());
        assert_eq!(status(t.by_path("tcp-0")), Some(404), "named by its token, not its number");
        assert_eq!(status(t.by_path("tcp-9")), Some(404));
        assert_eq!(status(t.by_path("nope")), Some(400));
    }
}
