//! The internet behind the lab VPC's gateway: one host at a TEST-NET-2 address in a namespace
//! of its own. Like an internet gateway, it knows only the instances' primary addresses (the
//! ones with a public mapping): a packet from any other VPC address has no way back and is
//! dropped on arrival by reverse-path filtering.

use crate::netns::Netns;

/// The internet host's address.
pub const HOST: &str = "198.51.100.10";
const GATEWAY: &str = "198.51.100.1";

pub struct Internet {
    pub netns: Netns,
}

impl super::Lab {
    /// Connects an internet host to the VPC fabric; it can answer the primary addresses of the
    /// lab's instances and nothing else.
    pub fn internet(&self) -> Internet {
        let netns = Netns::new("inet");
        let fabric_if = format!("igw{}", std::process::id() % 100_000);
        self.fabric.add_veth(&fabric_if, &netns, "eth0");
        self.fabric
            .ip(&["addr", "add", &format!("{GATEWAY}/24"), "dev", &fabric_if]);
        self.fabric.ip(&["link", "set", &fabric_if, "up"]);
        netns.ip(&["addr", "add", &format!("{HOST}/24"), "dev", "eth0"]);
        netns.ip(&["link", "set", "eth0", "up"]);
        netns.run("sysctl", &["-qw", "net.ipv4.conf.all.rp_filter=1"]);
        netns.run("sysctl", &["-qw", "net.ipv4.conf.eth0.rp_filter=1"]);
        let instances = std::iter::once(&self.node)
            .chain(self.second_node.as_ref())
            .chain(&self.hosts);
        for instance in instances {
            netns.ip(&[
                "route",
                "add",
                &format!("{}/32", instance.primary_ip),
                "via",
                GATEWAY,
            ]);
        }
        Internet { netns }
    }
}
