//! Integration tests of `tests::netns`: namespaces, veths, children and their cleanup.

use std::time::Duration;
use tests::netns::Netns;

fn ns_exists(name: &str) -> bool {
    let out = std::process::Command::new("ip").args(["netns", "list"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).lines().any(|l| l.split_whitespace().next() == Some(name))
}

#[test]
fn veth_ping_child_and_cleanup_on_drop() {
    let (a_name, pid);
    {
        let a = Netns::new("a").unwrap();
        let b = Netns::new("b").unwrap();
        a_name = a.name().to_string();
        assert!(ns_exists(&a_name));
        Netns::veth(&a, "v0", &b, "v1").unwrap();
        a.addr("v0", "198.18.200.1/24").unwrap();
        b.addr("v1", "198.18.200.2/24").unwrap();
        a.addr("v0", "2001:2:0:200::1/64").unwrap();
        b.addr("v1", "2001:2:0:200::2/64").unwrap();
        a.sysctl("net.ipv4.ip_forward", "1").unwrap();
        assert_eq!(a.sysctl_get("net.ipv4.ip_forward").unwrap(), "1");
        assert_eq!(b.sysctl_get("net.ipv4.ip_forward").unwrap(), "0", "sysctl leaked across namespaces");
        let out = a.exec("ip", &["-o", "addr", "show", "v0"]).unwrap();
        assert!(String::from_utf8_lossy(&out.stdout).contains("198.18.200.1/24"));
        let l = b.within(|| std::net::TcpListener::bind("198.18.200.2:0").unwrap()).unwrap();
        let port = l.local_addr().unwrap().port();
        a.within(move || std::net::TcpStream::connect(("198.18.200.2", port)).unwrap()).unwrap();
        // IPv6 over the same veth, via a socket made by a thread inside `a`.
        let l = b.within(|| std::net::TcpListener::bind("[2001:2:0:200::2]:0").unwrap()).unwrap();
        let port = l.local_addr().unwrap().port();
        a.within(move || std::net::TcpStream::connect(("2001:2:0:200::2", port)).unwrap()).unwrap();
        let mut child = b.spawn("sh", &["-c", "echo started; exec sleep 600"]).unwrap();
        pid = child.pid();
        assert!(child.wait_for_log("started", Duration::from_secs(5)), "log: {}", child.log());
        assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());
    }
    assert!(!ns_exists(&a_name), "namespace {a_name} left behind");
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists(), "child {pid} left behind");
}
