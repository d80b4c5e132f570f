//! Network namespaces a test creates (and removes on drop), and entering one on this thread.

use std::{fs::File, os::fd::AsRawFd};

use crate::sh;

/// A named network namespace (`/run/netns/<name>`), deleted when dropped.
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates a uniquely named namespace with its loopback up.
    pub fn new(what: &str) -> Self {
        let name = crate::unique_name(what);
        sh::ip(&["netns", "add", &name]);
        sh::ip(&["-n", &name, "link", "set", "lo", "up"]);
        Self { name }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    /// `ip -n <ns> args…`.
    pub fn ip(&self, args: &[&str]) -> String {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        sh::ip(&full)
    }

    /// A veth pair: `name` here, `peer` in `other`.
    pub fn add_veth(&self, name: &str, other: &Netns, peer: &str) {
        self.ip(&[
            "link",
            "add",
            name,
            "type",
            "veth",
            "peer",
            "name",
            peer,
            "netns",
            other.name(),
        ]);
    }

    /// Runs a program inside the namespace (bpffs stays visible).
    pub fn run(&self, program: &str, args: &[&str]) -> String {
        sh::run_in(&self.name, program, args)
    }

    /// Runs `f` on a fresh thread that lives in this namespace; sockets it opens belong here.
    pub fn within<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = self.path();
        std::thread::scope(|s| {
            s.spawn(move || {
                let ns = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
                // SAFETY: a namespace fd; the thread is ours alone and ends after `f`.
                let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
                f()
            })
            .join()
            .expect("thread inside the namespace panicked")
        })
    }

    /// The ifindex of `ifname` in this namespace.
    pub fn ifindex(&self, ifname: &str) -> u32 {
        let out = self.ip(&["-j", "link", "show", "dev", ifname]);
        let links: serde_json::Value = serde_json::from_str(&out).expect("ip -j output is JSON");
        links[0]["ifindex"].as_u64().expect("ifindex in ip -j link") as u32
    }
}

impl Netns {
    /// A UDP socket bound in this namespace to `addr` (port chosen by the kernel), with a short
    /// read timeout.
    pub fn udp_socket(&self, addr: std::net::Ipv4Addr) -> std::net::UdpSocket {
        let socket = self
            .within(|| std::net::UdpSocket::bind((addr, 0)))
            .unwrap_or_else(|e| panic!("{}: bind {addr}: {e}", self.name));
        socket
            .set_read_timeout(Some(std::time::Duration::from_millis(300)))
            .expect("set timeout");
        socket
    }

    /// Sends `count` datagrams from `from` (an address of this namespace) to `to`.
    pub fn send_udp(&self, from: std::net::Ipv4Addr, to: std::net::SocketAddr, count: usize) {
        let socket = self.udp_socket(from);
        for i in 0..count {
            // Unreachable destinations are part of what tests probe: errors are not failures.
            let _ = socket.send_to(format!("eniflow {i}").as_bytes(), to);
        }
    }

    /// Packets received on `ifname` so far (`ip -s link`).
    pub fn rx_packets(&self, ifname: &str) -> u64 {
        let out = self.ip(&["-j", "-s", "link", "show", "dev", ifname]);
        let links: serde_json::Value = serde_json::from_str(&out).expect("ip -j output is JSON");
        links[0]["stats64"]["rx"]["packets"]
            .as_u64()
            .expect("rx packets in ip -s -j link")
    }
}

/// How many datagrams `socket` receives before it times out (at most `count`), and from whom.
pub fn receive(socket: &std::net::UdpSocket, count: usize) -> Vec<std::net::SocketAddr> {
    let mut buf = [0u8; 64];
    (0..count)
        .map_while(|_| socket.recv_from(&mut buf).ok().map(|(_, from)| from))
        .collect()
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Two namespaces joined by a veth pair with addresses on one /24: `left` holds `<left_if>`
/// at .1, `right` holds `<right_if>` at .2.
pub struct Wire {
    pub left: Netns,
    pub right: Netns,
    pub left_if: String,
    pub right_if: String,
    pub left_addr: std::net::Ipv4Addr,
    pub right_addr: std::net::Ipv4Addr,
}

impl Wire {
    pub fn new(subnet: [u8; 3]) -> Self {
        let left = Netns::new("l");
        let right = Netns::new("r");
        let (left_if, right_if) = ("eth0".to_owned(), "peer0".to_owned());
        left.ip(&[
            "link",
            "add",
            &left_if,
            "type",
            "veth",
            "peer",
            "name",
            &right_if,
            "netns",
            right.name(),
        ]);
        let [a, b, c] = subnet;
        let left_addr = std::net::Ipv4Addr::new(a, b, c, 1);
        let right_addr = std::net::Ipv4Addr::new(a, b, c, 2);
        left.ip(&["addr", "add", &format!("{left_addr}/24"), "dev", &left_if]);
        right.ip(&["addr", "add", &format!("{right_addr}/24"), "dev", &right_if]);
        left.ip(&["link", "set", &left_if, "up"]);
        right.ip(&["link", "set", &right_if, "up"]);
        Self {
            left,
            right,
            left_if,
            right_if,
            left_addr,
            right_addr,
        }
    }

    /// Sends `count` UDP datagrams from left to right and returns how many arrived.
    pub fn send_udp(&self, count: usize) -> usize {
        let receiver = self
            .right
            .within(|| std::net::UdpSocket::bind((self.right_addr, 0)).expect("bind receiver"));
        receiver
            .set_read_timeout(Some(std::time::Duration::from_millis(500)))
            .expect("set timeout");
        let to = receiver.local_addr().expect("receiver address");
        self.left.within(|| {
            let sender = std::net::UdpSocket::bind((self.left_addr, 0)).expect("bind sender");
            for i in 0..count {
                sender
                    .send_to(format!("eniflow {i}").as_bytes(), to)
                    .expect("send");
            }
        });
        let mut buf = [0u8; 64];
        (0..count)
            .take_while(|_| receiver.recv(&mut buf).is_ok())
            .count()
    }
}
