//! Max pods: the agent's bundled instance limits agree with EC2's DescribeInstanceTypes (the lab's,
//! which carries AWS's data), and `eniflow-agent max-pods` prints VPC CNI's figures, minus the
//! trunk ENI with security groups for pods, and refuses bad input by name.

use std::process::Command;

use eniflow_agent::limits::{self, Hypervisor};
use eniflow_tests::{agent::binary, lab::Emulator};

#[tokio::test]
async fn bundled_limits_agree_with_describe_instance_types() {
    let emulator = Emulator::start(None);
    let types = emulator
        .ec2()
        .describe_instance_types()
        .send()
        .await
        .expect("DescribeInstanceTypes")
        .instance_types
        .unwrap_or_default();
    assert!(types.len() > 1000, "only {} instance types", types.len());
    for info in &types {
        let name = info.instance_type().expect("a type").as_str();
        let bundled = limits::bundled(name).unwrap_or_else(|| panic!("{name} is not bundled"));
        let net = info.network_info().expect("NetworkInfo");
        let default_card = net.default_network_card_index().unwrap_or(0);
        let card_enis = net
            .network_cards()
            .iter()
            .find(|c| c.network_card_index() == Some(default_card))
            .and_then(|c| c.maximum_network_interfaces());
        let hypervisor = match info.hypervisor().map(|h| h.as_str()) {
            Some("nitro") => Hypervisor::Nitro,
            Some("xen") => Hypervisor::Xen,
            None => Hypervisor::None,
            Some(other) => panic!("{name}: hypervisor {other}"),
        };
        assert_eq!(
            (
                Some(bundled.max_enis as i32),
                card_enis.or(net.maximum_network_interfaces()),
                net.ipv4_addresses_per_interface(),
                net.maximum_network_cards(),
                info.v_cpu_info().and_then(|v| v.default_v_cpus()),
                hypervisor,
            ),
            (
                net.maximum_network_interfaces(),
                Some(bundled.default_card_enis as i32),
                Some(bundled.ipv4_per_eni as i32),
                Some(bundled.network_cards as i32),
                Some(bundled.vcpus as i32),
                bundled.hypervisor,
            ),
            "{name}"
        );
    }
    assert_eq!(limits::bundled_types().count(), types.len());
}

fn max_pods(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(binary("eniflow-agent"))
        .arg("max-pods")
        .args(args)
        .output()
        .expect("run eniflow-agent max-pods");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        String::from_utf8_lossy(&out.stderr).trim().to_owned(),
    )
}

#[test]
fn max_pods_prints_vpc_cnis_figures_minus_the_trunk() {
    for (args, expected) in [
        (&["--instance-type", "m5.large"][..], "29"),
        (&["--instance-type", "t3.medium"], "17"),
        (&["--instance-type", "c5.4xlarge"], "110"),
        (
            &["--instance-type", "c5.4xlarge", "--show-max-allowed"],
            "234",
        ),
        (
            &[
                "--instance-type",
                "m5.large",
                "--cni-custom-networking-enabled",
            ],
            "20",
        ),
        (
            &[
                "--instance-type",
                "m5.large",
                "--cni-prefix-delegation-enabled",
                "--show-max-allowed",
            ],
            "434",
        ),
        (&["--instance-type", "m5.large", "--cni-max-eni", "2"], "20"),
        // Security groups for pods: the trunk takes one of m5.large's three ENIs.
        (&["--instance-type", "m5.large", "--pod-eni"], "20"),
        (
            &["--instance-type", "c5.4xlarge", "--pod-eni", "--uncapped"],
            "205",
        ),
    ] {
        let (ok, stdout, stderr) = max_pods(args);
        assert!(ok, "{args:?}: {stderr}");
        assert_eq!(stdout, expected, "{args:?}");
    }
}

#[test]
fn max_pods_names_what_is_wrong() {
    for (args, named) in [
        (&["--instance-type", "m5.huge"][..], "m5.huge"),
        (
            &["--instance-type", "m4.large", "--prefix-delegation"],
            "Nitro",
        ),
        (
            &["--instance-type", "m5.large", "--max-eni", "0"],
            "max ENI",
        ),
        (
            &[
                "--instance-type",
                "t3.nano",
                "--custom-networking",
                "--pod-eni",
            ],
            "none left for pods",
        ),
        (&["--instance-type", "m5.large", "--max-eni", "-1"], "-1"),
    ] {
        let (ok, stdout, stderr) = max_pods(args);
        assert!(!ok, "{args:?} succeeded: {stdout}");
        assert!(stdout.is_empty(), "{args:?} printed {stdout:?}");
        assert!(stderr.contains(named), "{args:?}: {stderr}");
    }
}

#[test]
fn security_groups_for_pods_cost_one_enis_worth_of_addresses_on_every_type() {
    // Uncapped, so the instance's own figure shows: the trunk takes one ENI, and with it the
    // ENI's addresses but its primary (VPC CNI's calculator counts that ENI for pods).
    for name in [
        "t3.medium",
        "m6i.large",
        "m5.4xlarge",
        "c5.18xlarge",
        "r6i.32xlarge",
    ] {
        let figure = |extra: &[&str]| {
            let mut args = vec!["--instance-type", name, "--uncapped"];
            args.extend_from_slice(extra);
            let (ok, stdout, stderr) = max_pods(&args);
            assert!(ok, "{args:?}: {stderr}");
            stdout.parse::<u32>().unwrap()
        };
        let per_eni = limits::bundled(name).unwrap().ipv4_per_eni;
        assert_eq!(figure(&[]) - figure(&["--pod-eni"]), per_eni - 1, "{name}");
    }
}
