//! Fuzzes the admin API's JSON request bodies as the daemons read them: the shared extractor (size limit,
//! content type, JSON errors turned into 400s) with the one body type the APIs take, hcpe's uplink patch.
//! Nothing may panic; a body is accepted only if serde would take it.
#![no_main]

use axum::body::Body;
use axum::extract::FromRequest;
use axum::http::Request;
use common::admin::ApiJson;
use hcpe::admin::api::UplinkPatch;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let content_type = if data.first() == Some(&b'!') { "text/plain" } else { "application/json" };
    let request = Request::builder()
        .method("PATCH")
        .uri("/api/v1/uplinks/lte")
        .header("content-type", content_type)
        .body(Body::from(data.to_vec()))
        .unwrap();
    let extracted = runtime.block_on(ApiJson::<UplinkPatch>::from_request(request, &()));
    if extracted.is_ok() {
        assert!(serde_json::from_slice::<UplinkPatch>(data).is_ok());
    }
});
