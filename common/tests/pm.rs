//! Against the real kernel: every test runs in a fresh network namespace of its own (the endpoint table and the
//! limits are per namespace, so nothing here touches the host's path manager); `testkit::netns` says how
//! the namespace comes and goes.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use common::pm::*;
use testkit::netns::{MptcpPair, in_new_netns, loopback_up, mptcp_pair, wait_for};

const LOCAL2: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
const LOOP6: IpAddr = IpAddr::V6(Ipv6Addr::LOCALHOST);

#[test]
fn limits_set_and_read_back_and_over_maximum_is_einval_with_the_kernels_reason() {
    in_new_netns(|| async {
        let pm = PathManager::connect().await.unwrap();
        pm.set_limits(Limits { subflows: 4, add_addr_accepted: 3 }).await.unwrap();
        assert_eq!(pm.limits().await.unwrap(), Limits { subflows: 4, add_addr_accepted: 3 });
        pm.set_limits(Limits { subflows: 8, add_addr_accepted: 0 }).await.unwrap();
        assert_eq!(pm.limits().await.unwrap(), Limits { subflows: 8, add_addr_accepted: 0 });

        let err = pm.set_limits(Limits { subflows: 9, add_addr_accepted: 0 }).await.unwrap_err();
        assert_eq!(err.errno(), Some(libc::EINVAL), "{err}");
        let text = err.to_string();
        assert!(text.contains("SET_LIMITS") && text.contains("limit greater than maximum"), "{text}");
        assert_eq!(pm.limits().await.unwrap(), Limits { subflows: 8, add_addr_accepted: 0 }, "refused = unchanged");
    });
}

#[test]
fn endpoints_add_list_change_delete_flush() {
    in_new_netns(|| async {
        let pm = PathManager::connect().await.unwrap();
        assert_eq!(pm.endpoints().await.unwrap(), vec![], "a new namespace has no endpoints");

        // IPv4, kernel-chosen id, subflow.
        let id4 = pm.add_endpoint(Endpoint::new(LOCAL2, EndpointFlags::SUBFLOW)).await.unwrap();
        // IPv6, our id, subflow + backup, bound to lo (ifindex 1).
        let v6 = Endpoint {
            addr: LOOP6,
            id: Some(42),
            flags: EndpointFlags::SUBFLOW | EndpointFlags::BACKUP,
            ifindex: Some(1),
            port: None,
        };
        assert_eq!(pm.add_endpoint(v6.clone()).await.unwrap(), 42);
        // A signal endpoint with a port.
        let sig = Endpoint { port: Some(5124), ..Endpoint::new("127.0.0.3".parse().unwrap(), EndpointFlags::SIGNAL) };
        let id_sig = pm.add_endpoint(sig.clone()).await.unwrap();
        assert!(id4 != 42 && id_sig != 42 && id4 != id_sig);

        let mut listed = pm.endpoints().await.unwrap();
        listed.sort_by_key(|e| e.id);
        let mut expected = vec![
            Endpoint { id: Some(id4), ..Endpoint::new(LOCAL2, EndpointFlags::SUBFLOW) },
            v6.clone(),
            Endpoint { id: Some(id_sig), ..sig },
        ];
        expected.sort_by_key(|e| e.id);
        assert_eq!(listed, expected);
        assert_eq!(pm.endpoint(42).await.unwrap(), v6);

        // Backup on by id, read back; off by address, read back; fullmesh survives set_backup.
        pm.set_flags(id4, EndpointFlags::SUBFLOW | EndpointFlags::BACKUP).await.unwrap();
        assert_eq!(pm.endpoint(id4).await.unwrap().flags, EndpointFlags::SUBFLOW | EndpointFlags::BACKUP);
        pm.set_flags(LOOP6, EndpointFlags::SUBFLOW).await.unwrap();
        assert_eq!(pm.endpoint(42).await.unwrap().flags, EndpointFlags::SUBFLOW);
        pm.set_flags(42, EndpointFlags::SUBFLOW | EndpointFlags::FULLMESH).await.unwrap();
        pm.set_backup(42, true).await.unwrap();
        assert_eq!(
            pm.endpoint(42).await.unwrap().flags,
            EndpointFlags::SUBFLOW | EndpointFlags::FULLMESH | EndpointFlags::BACKUP
        );
        pm.set_backup(42, false).await.unwrap();
        assert_eq!(pm.endpoint(42).await.unwrap().flags, EndpointFlags::SUBFLOW | EndpointFlags::FULLMESH);

        pm.del_endpoint(id4).await.unwrap();
        let ids: Vec<_> = pm.endpoints().await.unwrap().into_iter().map(|e| e.id).collect();
        assert!(!ids.contains(&Some(id4)) && ids.len() == 2, "{ids:?}");

        pm.flush().await.unwrap();
        assert_eq!(pm.endpoints().await.unwrap(), vec![]);
    });
}

#[test]
fn ensure_endpoint_is_idempotent_and_changes_only_what_differs() {
    in_new_netns(|| async {
        let pm = PathManager::connect().await.unwrap();
        let want = Endpoint::new(LOCAL2, EndpointFlags::SUBFLOW);
        let id = pm.ensure_endpoint(want.clone()).await.unwrap();
        assert_eq!(pm.ensure_endpoint(want.clone()).await.unwrap(), id);
        assert_eq!(pm.endpoints().await.unwrap(), vec![Endpoint { id: Some(id), ..want.clone() }]);

        // Backup toggled in place.
        let backup = Endpoint::new(LOCAL2, EndpointFlags::SUBFLOW | EndpointFlags::BACKUP);
        assert_eq!(pm.ensure_endpoint(backup.clone()).await.unwrap(), id);
        assert_eq!(pm.endpoints().await.unwrap(), vec![Endpoint { id: Some(id), ..backup }]);

        // A different interface or a different fixed flag means a new endpoint on the same address.
        let bound = Endpoint { ifindex: Some(1), ..Endpoint::new(LOCAL2, EndpointFlags::SIGNAL) };
        let id2 = pm.ensure_endpoint(bound.clone()).await.unwrap();
        assert_eq!(pm.endpoints().await.unwrap(), vec![Endpoint { id: Some(id2), ..bound }]);

        // Cleanup by address, when the id is lost.
        assert!(pm.del_endpoint_addr(LOCAL2).await.unwrap());
        assert!(!pm.del_endpoint_addr(LOCAL2).await.unwrap());
        assert_eq!(pm.endpoints().await.unwrap(), vec![]);
    });
}

#[test]
fn kernel_refusals_map_to_pm_error_with_errno_and_message() {
    in_new_netns(|| async {
        let pm = PathManager::connect().await.unwrap();

        let err = pm.del_endpoint(200).await.unwrap_err();
        assert_eq!(err.errno(), Some(libc::EINVAL), "{err}");
        match &err {
            PmError::Kernel { op: wire::PmCmd::DelAddr, message: Some(m), .. } => {
                assert!(m.contains("address not found"), "{m}")
            }
            other => panic!("expected a DEL_ADDR kernel error with a message, got {other:?}"),
        }

        pm.add_endpoint(Endpoint::new(LOCAL2, EndpointFlags::SUBFLOW)).await.unwrap();
        let dup = pm.add_endpoint(Endpoint::new(LOCAL2, EndpointFlags::SUBFLOW)).await.unwrap_err();
        assert_eq!(dup.errno(), Some(libc::EEXIST), "{dup}");

        // A port without `signal` is refused by the kernel's validation, not silently dropped.
        let bad = Endpoint { port: Some(1000), ..Endpoint::new("127.0.0.9".parse().unwrap(), EndpointFlags::SUBFLOW) };
        let err = pm.add_endpoint(bad).await.unwrap_err();
        assert_eq!(err.errno(), Some(libc::EINVAL), "{err}");

        assert_eq!(pm.endpoint(77).await.unwrap_err().errno(), Some(libc::EINVAL));
        assert_eq!(pm.set_flags(77, EndpointFlags::BACKUP).await.unwrap_err().errno(), Some(libc::EINVAL));
    });
}

#[test]
fn events_follow_an_mptcp_connection_over_loopback() {
    in_new_netns(|| async {
        loopback_up();
        let pm = PathManager::connect().await.unwrap();
        pm.set_limits(Limits { subflows: 2, add_addr_accepted: 0 }).await.unwrap();
        let id2 = pm.add_endpoint(Endpoint::new(LOCAL2, EndpointFlags::SUBFLOW)).await.unwrap();
        let mut events = pm.subscribe().await.unwrap();

        let MptcpPair { listener: _listener, server_addr, client, server } = mptcp_pair(None).await;
        let client_addr = client.local_addr().unwrap();

        let is_client = |c: &ConnectionEvent| !c.server_side && c.local == client_addr && c.remote == server_addr;
        let created =
            wait_for(&mut events, "client CREATED", |e| matches!(e, PmEvent::Created(c) if is_client(c))).await;
        let PmEvent::Created(created) = created else { unreachable!() };
        let token = created.token;
        assert_ne!(token, 0);
        wait_for(
            &mut events,
            "client ESTABLISHED",
            |e| matches!(e, PmEvent::Established(c) if c.token == token && is_client(c)),
        )
        .await;
        let sub = wait_for(
            &mut events,
            "SUB_ESTABLISHED from endpoint 127.0.0.2",
            |e| matches!(e, PmEvent::SubflowEstablished(s) if s.token == token),
        )
        .await;
        let PmEvent::SubflowEstablished(sub) = sub else { unreachable!() };
        assert_eq!((sub.local.ip(), sub.local_id, sub.remote), (LOCAL2, id2, server_addr));
        assert!(!sub.backup);

        // Backup on: MP_PRIO goes over the subflow and the kernel reports the new priority.
        pm.set_backup(id2, true).await.unwrap();
        let prio = wait_for(&mut events, "SUB_PRIORITY backup", |e| {
            matches!(e, PmEvent::SubflowPriority(s) if s.backup && (s.local.ip() == LOCAL2 || s.remote.ip() == LOCAL2))
        })
        .await;
        let PmEvent::SubflowPriority(prio) = prio else { unreachable!() };
        assert!(prio.local.port() == sub.local.port() || prio.remote.port() == sub.local.port(), "{prio:?}");

        drop(client);
        drop(server);
        wait_for(&mut events, "client CLOSED", |e| matches!(e, PmEvent::Closed { token: t } if *t == token)).await;
    });
}

/// The daemons share one `PathManager` between tasks of a multi-thread runtime: its futures must be `Send`.
#[allow(dead_code, clippy::let_underscore_future)]
fn futures_are_send(pm: &PathManager) {
    fn send<T: Send>(_: T) {}
    send(PathManager::connect());
    send(pm.add_endpoint(Endpoint::new(LOCAL2, EndpointFlags::SUBFLOW)));
    send(pm.ensure_endpoint(Endpoint::new(LOCAL2, EndpointFlags::SUBFLOW)));
    send(pm.endpoints());
    send(pm.set_backup(1, true));
    send(pm.limits());
    send(pm.subscribe());
    fn sync<T: Send + Sync>() {}
    sync::<PathManager>();
    sync::<PmError>();
    send::<Option<PmEvents>>(None);
}
