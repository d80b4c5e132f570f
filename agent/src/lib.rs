//! eniflow's node agent: hands pods VPC addresses from ENIs and keeps the eBPF data plane that
//! moves their packets.

pub mod addressing;
pub mod bpffs;
pub mod cni;
pub mod cninode;
pub mod datapath;
pub mod ec2;
pub mod ec2_budget;
pub mod eni_links;
pub mod events;
pub mod faults;
pub mod files;
pub mod install;
pub mod instance;
pub mod introspection;
pub mod ipam;
pub mod kube;
pub mod limits;
pub mod max_pods;
pub mod metrics;
pub mod monitor;
pub mod netlink;
pub mod snat;
pub mod startup_taint;
pub mod status;
pub mod vpc_cni;
pub mod watched;
