//! VPC CNI 1.23's connmark table on hosts whose iptables is the nftables backend: `table ip
//! aws-cni`, chains `nat-prerouting` (jumps from `eni*` veths to `snat-mark`, and copies the
//! connection's mark to each packet) and `snat-mark` (marks off-VPC connections 0x80). Left
//! behind, it would keep rewriting the mark of eniflow's pods' packets. The agent's image has
//! no `nft`, so the table is read and deleted over nfnetlink.

use netlink_packet_core::{
    NetlinkBuffer, NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_DUMP,
    NLM_F_REQUEST,
};
use netlink_packet_netfilter::{
    nftables::{ChainAttribute, ChainMessage, NfTablesMessage, TableAttribute, TableMessage},
    none::ControlMessage,
    NetfilterHeader, NetfilterMessage, NetfilterMessageInner, NetfilterProtoFamily,
};
use netlink_sys::{protocols::NETLINK_NETFILTER, Socket};

pub const TABLE: &str = "aws-cni";
/// The only chains VPC CNI puts in its table.
const CHAINS: [&str; 2] = ["nat-prerouting", "snat-mark"];
/// nfgenmsg's res_id of a batch: the subsystem it goes to.
const NFNL_SUBSYS_NFTABLES: u16 = 10;

/// What became of the table.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The node has no such table.
    Absent,
    Removed,
    /// A chain VPC CNI does not make is in it: not VPC CNI's alone, so kept.
    Kept {
        foreign: Vec<String>,
    },
    /// Kept: `unreadable` of the node's chains could not be read, so whether the table holds
    /// another's is not known.
    Unsure {
        unreadable: usize,
    },
}

/// Deletes `table ip aws-cni` when it holds VPC CNI's chains and no other.
pub fn remove() -> std::io::Result<Outcome> {
    // A kernel without nf_tables has no such table.
    let absent = |e: &std::io::Error| {
        matches!(
            e.raw_os_error(),
            Some(libc::EPROTONOSUPPORT | libc::EOPNOTSUPP)
        )
    };
    let mut nfnl = match Nfnl::open() {
        Err(e) if absent(&e) => return Ok(Outcome::Absent),
        opened => opened?,
    };
    let name = || vec![TableAttribute::Name(TABLE.to_owned())];
    let get = NfTablesMessage::GetTable(TableMessage { attributes: name() });
    match nfnl.request(get, NLM_F_REQUEST | NLM_F_ACK) {
        Err(e) if absent(&e) || e.raw_os_error() == Some(libc::ENOENT) => {
            return Ok(Outcome::Absent)
        }
        found => found?,
    };
    // The kernel does not filter a chain dump by table: every IPv4 chain comes.
    let dump = NfTablesMessage::GetChain(ChainMessage { attributes: vec![] });
    let listed = nfnl.request(dump, NLM_F_REQUEST | NLM_F_DUMP)?;
    let chains: Vec<String> = listed
        .messages
        .into_iter()
        .filter_map(|m| match m {
            NfTablesMessage::NewChain(chain) => Some(chain.attributes),
            _ => None,
        })
        .filter(|attributes| {
            attributes
                .iter()
                .any(|a| matches!(a, ChainAttribute::Table(t) if t == TABLE))
        })
        .filter_map(|attributes| {
            attributes.into_iter().find_map(|a| match a {
                ChainAttribute::Name(name) => Some(name),
                _ => None,
            })
        })
        .collect();
    let foreign: Vec<String> = chains
        .iter()
        .filter(|c| !CHAINS.contains(&c.as_str()))
        .cloned()
        .collect();
    if !foreign.is_empty() {
        return Ok(Outcome::Kept { foreign });
    }
    if listed.unreadable > 0 {
        // One of them may be a chain of another's in VPC CNI's table.
        return Ok(Outcome::Unsure {
            unreadable: listed.unreadable,
        });
    }
    let delete = NfTablesMessage::DeleteTable(TableMessage { attributes: name() });
    nfnl.batch(delete).map(|()| Outcome::Removed)
}

/// What nf_tables answered a request with.
#[derive(Default)]
struct Answers {
    messages: Vec<NfTablesMessage>,
    /// Messages that could not be parsed.
    unreadable: usize,
}

/// A netfilter netlink socket speaking to nf_tables about IPv4 tables.
struct Nfnl {
    socket: Socket,
    seq: u32,
}

impl Nfnl {
    fn open() -> std::io::Result<Nfnl> {
        let mut socket = Socket::new(NETLINK_NETFILTER)?;
        socket.bind_auto()?;
        socket.connect(&netlink_sys::SocketAddr::new(0, 0))?;
        Ok(Nfnl { socket, seq: 0 })
    }

    fn message(
        &mut self,
        inner: impl Into<NetfilterMessageInner>,
        family: NetfilterProtoFamily,
        res_id: u16,
        flags: u16,
    ) -> (u32, Vec<u8>) {
        self.seq += 1;
        let mut header = NetlinkHeader::default();
        header.flags = flags;
        header.sequence_number = self.seq;
        let payload = NetfilterMessage::new(NetfilterHeader::new(family, 0, res_id), inner);
        let mut msg = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(payload));
        msg.finalize();
        let mut bytes = vec![0; msg.buffer_len()];
        msg.serialize(&mut bytes);
        (self.seq, bytes)
    }

    /// Sends `msg` and collects the answers until it is done (its dump ended or it was
    /// acknowledged); an error answer is returned as the error it carries.
    fn request(&mut self, msg: NfTablesMessage, flags: u16) -> std::io::Result<Answers> {
        let (seq, bytes) = self.message(msg, NetfilterProtoFamily::IPv4, 0, flags);
        self.socket.send(&bytes, 0)?;
        self.answers(seq)
    }

    /// Sends `msg` alone in a batch, as nf_tables takes changes, and waits for its ack.
    fn batch(&mut self, msg: NfTablesMessage) -> std::io::Result<()> {
        let unspec = NetfilterProtoFamily::Unspec;
        let (_, mut bytes) = self.message(
            ControlMessage::BatchBegin,
            unspec,
            NFNL_SUBSYS_NFTABLES,
            NLM_F_REQUEST,
        );
        let (seq, change) = self.message(
            msg,
            NetfilterProtoFamily::IPv4,
            0,
            NLM_F_REQUEST | NLM_F_ACK,
        );
        bytes.extend(change);
        let (_, end) = self.message(
            ControlMessage::BatchEnd,
            unspec,
            NFNL_SUBSYS_NFTABLES,
            NLM_F_REQUEST,
        );
        bytes.extend(end);
        self.socket.send(&bytes, 0)?;
        self.answers(seq).map(drop)
    }

    fn answers(&mut self, last: u32) -> std::io::Result<Answers> {
        let mut found = Answers::default();
        loop {
            let (datagram, _) = self.socket.recv_from_full()?;
            let mut offset = 0;
            while offset < datagram.len() {
                let rest = &datagram[offset..];
                let length = NetlinkBuffer::new_checked(rest)
                    .map_err(|e| std::io::Error::other(format!("an nfnetlink answer: {e}")))?
                    .length() as usize;
                offset += (length + 3) & !3;
                // One message this crate cannot read (another table's chain of a kind it
                // does not know) does not hide the others.
                let Ok(msg) = NetlinkMessage::<NetfilterMessage>::deserialize(rest) else {
                    found.unreadable += 1;
                    continue;
                };
                let done = msg.header.sequence_number == last;
                match msg.payload {
                    NetlinkPayload::Error(e) if e.code.is_some() => return Err(e.to_io()),
                    NetlinkPayload::Error(_) | NetlinkPayload::Done(_) if done => return Ok(found),
                    NetlinkPayload::InnerMessage(NetfilterMessage {
                        inner: NetfilterMessageInner::NfTables(m),
                        ..
                    }) => found.messages.push(m),
                    _ => {}
                }
            }
        }
    }
}
