//! Which subnets new ENIs may go to (subnet discovery, VPC CNI's rules): the primary ENI's subnet
//! unless tagged `kubernetes.io/role/cni=0`, other subnets of the zone only when tagged with that
//! role, and a subnet tagged for particular clusters only for those clusters. Most free first.

use crate::ec2::Subnet;

/// A subnet's role tag: present (and not "0") admits a secondary subnet; "0" excludes any.
pub const ROLE_TAG: &str = "kubernetes.io/role/cni";
/// `<prefix><cluster name>` tags restrict a subnet to the clusters they name.
pub const CLUSTER_TAG_PREFIX: &str = "cni.networking.k8s.aws/cluster/";

/// Eligible subnet ids, the most free addresses first (the primary subnet first among equals).
pub fn eligible(subnets: &[Subnet], primary: &str, cluster: Option<&str>) -> Vec<String> {
    let mut chosen: Vec<&Subnet> = subnets
        .iter()
        .filter(|s| match s.tags.get(ROLE_TAG).map(String::as_str) {
            Some("0") => false,
            Some(_) => true,
            None => s.id == primary,
        })
        .filter(|s| {
            let mut clusters = s
                .tags
                .keys()
                .filter_map(|k| k.strip_prefix(CLUSTER_TAG_PREFIX))
                .peekable();
            clusters.peek().is_none() || cluster.is_some_and(|c| clusters.any(|t| t == c))
        })
        .collect();
    chosen.sort_by_key(|s| (std::cmp::Reverse(s.available), s.id != primary));
    chosen.into_iter().map(|s| s.id.clone()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subnet(id: &str, available: u32, tags: &[(&str, &str)]) -> Subnet {
        Subnet {
            id: id.into(),
            cidr: String::new(),
            available,
            tags: tags
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn vpc_cnis_tag_rules() {
        let role = (ROLE_TAG, "1");
        let ours = ("cni.networking.k8s.aws/cluster/lab", "shared");
        let theirs = ("cni.networking.k8s.aws/cluster/other", "shared");
        let subnets = [
            subnet("primary", 5, &[]),
            subnet("tagged", 200, &[role]),
            subnet("untagged", 900, &[]),
            subnet("excluded", 900, &[(ROLE_TAG, "0")]),
            subnet("ours", 100, &[role, ours]),
            subnet("theirs", 800, &[role, theirs]),
        ];
        assert_eq!(
            eligible(&subnets, "primary", Some("lab")),
            ["tagged", "ours", "primary"]
        );
        assert_eq!(eligible(&subnets, "primary", None), ["tagged", "primary"]);
        // Even the primary subnet can be excluded.
        let excluded_primary = [
            subnet("primary", 5, &[(ROLE_TAG, "0")]),
            subnet("tagged", 1, &[role]),
        ];
        assert_eq!(eligible(&excluded_primary, "primary", None), ["tagged"]);
        // Ties go to the primary subnet.
        let tie = [subnet("tagged", 7, &[role]), subnet("primary", 7, &[])];
        assert_eq!(eligible(&tie, "primary", None), ["primary", "tagged"]);
    }
}
