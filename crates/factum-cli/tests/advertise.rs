//! What Gossip tells clients to connect to (issue 13 item 3): host names
//! and `[v6]:port` are accepted by `--advertise`, a server bound to
//! `0.0.0.0` does not advertise `0.0.0.0`, and a malformed address is a
//! usage error naming what is wrong.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use factum_proto::gossip::gossip_client::GossipClient;

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `Gossip.Read` at `addr`: the one member's host and port.
async fn advertised(addr: &str) -> (String, u32) {
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let info = GossipClient::new(channel)
        .read(factum_proto::shared::Empty {})
        .await
        .unwrap()
        .into_inner();
    let ep = info.members[0].http_end_point.clone().expect("an endpoint");
    (ep.address, ep.port)
}

#[tokio::test]
async fn host_names_and_v6_are_advertised_as_given() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let (child, addr) = common::serve(&["--data", data, "--advertise", "LocalHost:2113"]);
    let _server = Server(child);
    assert_eq!(advertised(&addr).await, ("localhost".to_owned(), 2113));
    drop(_server);

    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let (child, addr) = common::serve(&["--data", data, "--advertise", "[::1]:2114"]);
    let _server = Server(child);
    assert_eq!(advertised(&addr).await, ("::1".to_owned(), 2114));
}

#[tokio::test]
async fn an_unspecified_bound_address_is_not_advertised() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_factum"))
        .args(["serve", "--listen", "0.0.0.0:0", "--insecure", "--data"])
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let _server = Server(child);
    let port = line
        .split(" on ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|a| a.rsplit_once(':'))
        .map(|(_, p)| p.to_owned())
        .unwrap_or_else(|| panic!("no address in {line:?}"));
    let (host, advertised_port) = advertised(&format!("127.0.0.1:{port}")).await;
    assert_ne!(host, "0.0.0.0");
    assert!(host.parse::<std::net::Ipv4Addr>().is_ok(), "{host}");
    assert_eq!(advertised_port.to_string(), port);
}

#[test]
fn a_malformed_address_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    for bad in ["localhost", "bad_name:2113", "::1:2113", "localhost:0"] {
        let out = Command::new(env!("CARGO_BIN_EXE_factum"))
            .args(["serve", "--listen", "127.0.0.1:0", "--insecure", "--data"])
            .arg(dir.path())
            .args(["--advertise", bad])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{bad}: {stderr}");
        assert!(stderr.contains("is not host:port"), "{bad}: {stderr}");
    }
}
