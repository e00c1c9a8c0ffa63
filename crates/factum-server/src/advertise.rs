//! The address Gossip tells clients to connect to: a host (IP address or
//! DNS name) and a port, as KurrentDB advertises them
//! (`--advertise host:port`, `ADVERTISE_HOST_TO_CLIENT_AS` in KurrentDB).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::str::FromStr;

/// A host and port clients can reach this node at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Advertise {
    host: String,
    port: u16,
}

impl Advertise {
    /// The host: an IP address (IPv6 without brackets) or a DNS name.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// What a node bound to `bound` advertises when no address is given:
    /// the bound address itself, except that an unspecified one
    /// (`0.0.0.0`, `::`), which no client can connect to, becomes this
    /// machine's outward address (the source address of its default
    /// route), or the loopback address on a machine without one.
    pub fn for_bound(bound: SocketAddr) -> Advertise {
        if !bound.ip().is_unspecified() {
            return Advertise::from(bound);
        }
        let ip = outward_ip(bound.ip()).unwrap_or(match bound.ip() {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
        });
        Advertise::from(SocketAddr::new(ip, bound.port()))
    }
}

/// The source address the kernel would use towards a documentation
/// address (RFC 5737 / RFC 3849): connecting a UDP socket sends nothing,
/// it only picks the route.
fn outward_ip(family: IpAddr) -> Option<IpAddr> {
    let (local, remote): (SocketAddr, SocketAddr) = match family {
        IpAddr::V4(_) => ("0.0.0.0:0".parse().ok()?, "192.0.2.1:9".parse().ok()?),
        IpAddr::V6(_) => ("[::]:0".parse().ok()?, "[2001:db8::1]:9".parse().ok()?),
    };
    let socket = UdpSocket::bind(local).ok()?;
    socket.connect(remote).ok()?;
    let ip = socket.local_addr().ok()?.ip();
    (!ip.is_unspecified()).then_some(ip)
}

impl From<SocketAddr> for Advertise {
    fn from(addr: SocketAddr) -> Advertise {
        Advertise {
            host: addr.ip().to_string(),
            port: addr.port(),
        }
    }
}

impl fmt::Display for Advertise {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// Why an advertised address was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdvertiseError(String);

impl fmt::Display for AdvertiseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for AdvertiseError {}

impl FromStr for Advertise {
    type Err = AdvertiseError;

    /// `host:port`, `a.b.c.d:port` or `[v6]:port`. A host name is checked
    /// as DNS has them (RFC 1123: labels of letters, digits and inner
    /// hyphens, at most 63 bytes each, 253 in all); it is not resolved.
    fn from_str(s: &str) -> Result<Advertise, AdvertiseError> {
        let bad = |why: &str| AdvertiseError(format!("{s:?} is not host:port: {why}"));
        if let Ok(addr) = s.parse::<SocketAddr>() {
            return Ok(Advertise::from(addr));
        }
        let (host, port) = s.rsplit_once(':').ok_or_else(|| bad("no port"))?;
        let port: u16 = port
            .parse()
            .map_err(|_| bad("the port is not a number from 1 to 65535"))?;
        if port == 0 {
            return Err(bad("the port is not a number from 1 to 65535"));
        }
        if host.starts_with('[') || host.contains(':') {
            return Err(bad("an IPv6 address goes in brackets: [::1]:2113"));
        }
        if host.parse::<IpAddr>().is_ok() {
            return Ok(Advertise {
                host: host.to_owned(),
                port,
            });
        }
        if !is_dns_name(host) {
            return Err(bad("the host is neither an IP address nor a DNS name"));
        }
        Ok(Advertise {
            host: host.to_ascii_lowercase(),
            port,
        })
    }
}

fn is_dns_name(host: &str) -> bool {
    let host = host.strip_suffix('.').unwrap_or(host);
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
        // All-numeric dotted names are malformed IPv4 addresses, not names.
        && !host.split('.').all(|l| l.bytes().all(|b| b.is_ascii_digit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_names_and_addresses() {
        for (input, host, port) in [
            ("localhost:2113", "localhost", 2113),
            ("LocalHost:2113", "localhost", 2113),
            ("node-1.example.com:443", "node-1.example.com", 443),
            ("node1.example.com.:1", "node1.example.com.", 1),
            ("10.0.0.5:2113", "10.0.0.5", 2113),
            ("[::1]:2113", "::1", 2113),
            ("[fe80::1]:65535", "fe80::1", 65535),
        ] {
            let a: Advertise = input.parse().unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!((a.host(), a.port()), (host, port), "{input}");
        }
        assert_eq!(
            "[::1]:2113".parse::<Advertise>().unwrap().to_string(),
            "[::1]:2113"
        );
        assert_eq!(
            "localhost:2113".parse::<Advertise>().unwrap().to_string(),
            "localhost:2113"
        );
    }

    #[test]
    fn refuses_what_is_not_host_port() {
        for input in [
            "",
            "localhost",
            ":2113",
            "localhost:",
            "localhost:0",
            "localhost:65536",
            "localhost:-1",
            "::1:2113",
            "[::1:2113",
            "bad_name:2113",
            "-lead.example:2113",
            "trail-.example:2113",
            "a..b:2113",
            "1.2.3:2113",
            "999.1.1.1:2113",
            "héllo:2113",
            "http://localhost:2113",
        ] {
            let e = input.parse::<Advertise>().unwrap_err();
            assert!(e.to_string().contains("is not host:port"), "{input}: {e}");
        }
        let long = format!("{}:1", "a".repeat(64));
        assert!(long.parse::<Advertise>().is_err());
    }

    #[test]
    fn an_unspecified_bound_address_is_not_advertised() {
        let a = Advertise::for_bound("0.0.0.0:2113".parse().unwrap());
        assert_ne!(a.host(), "0.0.0.0");
        assert!(a.host().parse::<Ipv4Addr>().is_ok(), "{a}");
        assert_eq!(a.port(), 2113);
        let a = Advertise::for_bound("[::]:2113".parse().unwrap());
        assert_ne!(a.host(), "::");
        let a = Advertise::for_bound("127.0.0.1:7".parse().unwrap());
        assert_eq!(a.to_string(), "127.0.0.1:7");
    }
}
