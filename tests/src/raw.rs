//! Hand-built frames sent on an interface (AF_PACKET): what a pod behind a trunk ENI puts on
//! the wire, VLAN tag included, which ordinary sockets cannot produce.

use std::net::Ipv4Addr;

/// An Ethernet frame carrying one UDP datagram, optionally 802.1Q-tagged.
pub struct UdpFrame {
    pub dst_mac: [u8; 6],
    pub src_mac: [u8; 6],
    pub vlan: Option<u16>,
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub src_port: u16,
    pub dst_port: u16,
    pub payload: Vec<u8>,
}

impl UdpFrame {
    pub fn bytes(&self) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&self.dst_mac);
        f.extend_from_slice(&self.src_mac);
        if let Some(vlan) = self.vlan {
            f.extend_from_slice(&0x8100u16.to_be_bytes());
            f.extend_from_slice(&(vlan & 0x0fff).to_be_bytes());
        }
        f.extend_from_slice(&0x0800u16.to_be_bytes());
        let udp_len = 8 + self.payload.len() as u16;
        let mut ip = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 17, 0, 0];
        ip[2..4].copy_from_slice(&(20 + udp_len).to_be_bytes());
        ip.extend_from_slice(&self.src.octets());
        ip.extend_from_slice(&self.dst.octets());
        let sum = checksum(&ip);
        ip[10..12].copy_from_slice(&sum.to_be_bytes());
        f.extend_from_slice(&ip);
        f.extend_from_slice(&self.src_port.to_be_bytes());
        f.extend_from_slice(&self.dst_port.to_be_bytes());
        f.extend_from_slice(&udp_len.to_be_bytes());
        f.extend_from_slice(&[0, 0]); // no UDP checksum (allowed over IPv4)
        f.extend_from_slice(&self.payload);
        f
    }
}

fn checksum(header: &[u8]) -> u16 {
    let mut sum: u32 = header
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Sends `frame` out of `ifindex` of the calling thread's network namespace.
pub fn send(ifindex: u32, frame: &[u8]) {
    send_many(ifindex, frame, 1);
}

/// Sends `frame` `count` times out of `ifindex`, through one socket (a flood).
pub fn send_many(ifindex: u32, frame: &[u8], count: usize) {
    send_each(ifindex, std::iter::repeat_n(frame, count));
}

/// Sends each frame out of `ifindex`, through one socket.
pub fn send_each<F: AsRef<[u8]>>(ifindex: u32, frames: impl IntoIterator<Item = F>) {
    // SAFETY: plain socket syscalls on a descriptor this function owns and closes.
    unsafe {
        let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
        assert!(
            fd >= 0,
            "AF_PACKET socket: {}",
            std::io::Error::last_os_error()
        );
        let mut to: libc::sockaddr_ll = std::mem::zeroed();
        to.sll_family = libc::AF_PACKET as u16;
        to.sll_ifindex = ifindex as i32;
        to.sll_halen = 6;
        for frame in frames {
            let frame = frame.as_ref();
            to.sll_addr[..6].copy_from_slice(&frame[..6]);
            let sent = libc::sendto(
                fd,
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&to as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            );
            if sent != frame.len() as isize {
                let err = std::io::Error::last_os_error();
                libc::close(fd);
                panic!("send on ifindex {ifindex}: {err}");
            }
        }
        libc::close(fd);
    }
}

/// Parses "aa:bb:cc:dd:ee:ff".
pub fn mac(text: &str) -> [u8; 6] {
    let bytes: Vec<u8> = text
        .split(':')
        .map(|b| u8::from_str_radix(b, 16).expect("a MAC"))
        .collect();
    bytes.try_into().expect("six bytes")
}
