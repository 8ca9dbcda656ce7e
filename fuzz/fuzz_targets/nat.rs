//! Fuzzes hcpe's NAT on the packets it reads from the TUN device, which any LAN device can shape: the IP/TCP
//! parser and the in-place rewrite, with complete and partial (virtio-net) checksums, then the reset it
//! would build for the packet. Nothing may panic and the packet keeps its length.
#![no_main]

use std::time::{Duration, Instant};

use hcpe::nat::{FamilyConfig, Nat, NatConfig, TcpChecksum, Timeouts};
use libfuzzer_sys::fuzz_target;

fn nat() -> Nat {
    Nat::new(NatConfig {
        v4: Some(FamilyConfig {
            listener: "100.127.254.1:7000".parse().unwrap(),
            pool_start: "100.127.254.2".parse().unwrap(),
            pool_size: 4,
            ports: (10000, 10010),
        }),
        v6: Some(FamilyConfig {
            listener: "[fdc9::1]:7000".parse().unwrap(),
            pool_start: "fdc9::2".parse().unwrap(),
            pool_size: 4,
            ports: (10000, 10010),
        }),
        timeouts: Timeouts {
            syn: Duration::from_secs(30),
            idle: Duration::from_secs(300),
            closed: Duration::from_secs(10),
        },
        first_endpoint: 0,
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, packet)) = data.split_first() else { return };
    let mut nat = nat();
    let now = Instant::now();
    // The same bytes twice: the second time the flow the first created may exist.
    for round in 0..2 {
        let mut p = packet.to_vec();
        let csum = if mode & 1 == 0 {
            TcpChecksum::Complete
        } else {
            TcpChecksum::Partial { start: u16::from(mode >> 1) * 2, offset: 16 }
        };
        let _ = nat.process_with(&mut p, csum, now + Duration::from_secs(round));
        assert_eq!(p.len(), packet.len());
        let _ = nat.reset_for(&p);
    }
    nat.expire(now + Duration::from_secs(3600));
    assert!(nat.is_empty());
});
