//! The two daemons' OpenAPI documents side by side. Each is generated from its routes (utoipa-axum registers
//! a route and its operation together), so what is checked here is what two hand-written documents got wrong:
//! a type both daemons serve must have one schema, the same in both.

use serde_json::Value;

fn documents() -> (Value, Value) {
    let hcpe = serde_json::to_value(hcpe::admin::openapi()).expect("hcpe document");
    let hag = serde_json::to_value(hag::admin::openapi()).expect("hag document");
    (hcpe, hag)
}

#[test]
fn shared_types_have_one_schema_in_both_daemons() {
    let (hcpe, hag) = documents();
    for name in ["Subflow", "Error", "Status"] {
        let (a, b) = (&hcpe["components"]["schemas"][name], &hag["components"]["schemas"][name]);
        assert!(a.is_object(), "hcpe has no {name} schema");
        assert_eq!(a, b, "{name} differs between hcpe and hag");
    }
    assert_eq!(hcpe["components"]["responses"], hag["components"]["responses"]);
    assert_eq!(hcpe["components"]["securitySchemes"], hag["components"]["securitySchemes"]);
    for path in ["/healthz", "/metrics", "/api/v1/status", "/api/v1/openapi.json"] {
        assert_eq!(hcpe["paths"][path], hag["paths"][path], "{path}");
    }
    // hcpe's subflow adds its backup flags to the shared schema instead of restating it.
    let flags = &hcpe["components"]["schemas"]["SubflowFlags"];
    assert!(flags.to_string().contains("#/components/schemas/Subflow"), "{flags}");
    let subflow = &hcpe["components"]["schemas"]["Subflow"];
    assert_eq!(
        subflow["required"],
        serde_json::json!(["id", "bytes_sent", "bytes_received", "rtt_us", "tcp_state"]),
        "the Option fields may be null, the others are always there"
    );
}

#[test]
fn every_reference_resolves() {
    let (hcpe, hag) = documents();
    for (daemon, doc) in [("hcpe", &hcpe), ("hag", &hag)] {
        let text = doc.to_string();
        for r in text.split("\"$ref\":\"").skip(1).map(|s| &s[..s.find('"').unwrap()]) {
            let mut node = doc;
            for seg in r.trim_start_matches("#/").split('/') {
                node = &node[seg];
            }
            assert!(node.is_object(), "{daemon}: {r} does not resolve");
        }
    }
}
