//! The lab's IMDSv2 answers as a node's IMDS does, from live EC2 state: the session-token rules
//! (checked with raw HTTP) and every key the agent reads (through `aws_config::imds`, as the agent
//! reads them), following attach, detach and address and prefix assignment. API only, no root.

use std::time::Duration;

use aws_config::imds::{self, client::error::ImdsError};
use eniflow_tests::lab::api_vpc::{addresses, prefixes, ApiVpc};

const TTL: &str = "X-aws-ec2-metadata-token-ttl-seconds";
const TOKEN: &str = "X-aws-ec2-metadata-token";
const MACS: &str = "/latest/meta-data/network/interfaces/macs/";

fn imds_client(vpc: &ApiVpc) -> imds::Client {
    imds::Client::builder()
        .endpoint(vpc.emulator.endpoint())
        .expect("a valid IMDS endpoint")
        .max_attempts(1)
        .build()
}

async fn get(client: &imds::Client, path: &str) -> String {
    client
        .get(path)
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"))
        .as_ref()
        .to_owned()
}

/// The HTTP status IMDS answered `path` with; panics if it answered 200.
async fn status(client: &imds::Client, path: &str) -> u16 {
    match client.get(path).await {
        Ok(value) => panic!("GET {path}: expected an error, got {:?}", value.as_ref()),
        Err(ImdsError::ErrorResponse(e)) => e.response().status().as_u16(),
        Err(e) => panic!("GET {path}: {e}"),
    }
}

async fn mac_of(vpc: &ApiVpc, eni: &str) -> String {
    vpc.describe(eni)
        .await
        .mac_address()
        .expect("a MAC")
        .to_owned()
}

fn lines(text: &str) -> Vec<String> {
    text.lines().map(str::to_owned).collect()
}

#[tokio::test]
async fn sessions_need_a_token_with_a_valid_ttl() {
    let vpc = ApiVpc::new().await;
    let subnet = vpc.subnet("10.0.1.0/24", "us-west-2a").await;
    let node = vpc.launch("m5.large", &subnet).await;
    vpc.emulator.select_imds(&node.id);

    let http: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into();
    let base = vpc.emulator.endpoint();
    let token_url = format!("{base}/latest/api/token");
    let id_url = format!("{base}/latest/meta-data/instance-id");

    let without = http.get(&id_url).call().expect("GET without a token");
    assert_eq!(without.status(), 401, "a GET without a token");

    for bad in [None, Some("0"), Some("21601"), Some("soon")] {
        let mut put = http.put(&token_url);
        if let Some(ttl) = bad {
            put = put.header(TTL, ttl);
        }
        let response = put.send_empty().expect("PUT token");
        assert_eq!(response.status(), 400, "a token TTL of {bad:?}");
    }

    let mut issued = http
        .put(&token_url)
        .header(TTL, "21600")
        .send_empty()
        .expect("PUT token");
    assert_eq!(issued.status(), 200);
    assert_eq!(
        issued.headers().get(TTL).and_then(|v| v.to_str().ok()),
        Some("21600"),
        "the token response echoes its TTL"
    );
    let token = issued.body_mut().read_to_string().expect("a token");

    let forged = http
        .get(&id_url)
        .header(TOKEN, format!("{token}x"))
        .call()
        .expect("GET with a forged token");
    assert_eq!(forged.status(), 401, "a token IMDS never issued");

    let mut answered = http
        .get(&id_url)
        .header(TOKEN, &token)
        .call()
        .expect("GET with the token");
    assert_eq!(answered.status(), 200);
    assert_eq!(answered.body_mut().read_to_string().unwrap(), node.id);

    let unknown = http
        .get(format!("{base}/latest/meta-data/no-such-key"))
        .header(TOKEN, &token)
        .call()
        .expect("GET an unknown key");
    assert_eq!(unknown.status(), 404);

    // A token expires with its TTL.
    let mut short = http
        .put(&token_url)
        .header(TTL, "1")
        .send_empty()
        .expect("PUT token");
    let short = short.body_mut().read_to_string().unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let expired = http
        .get(&id_url)
        .header(TOKEN, &short)
        .call()
        .expect("GET with an expired token");
    assert_eq!(expired.status(), 401, "an expired token");
}

#[tokio::test]
async fn instance_keys_match_ec2() {
    let vpc = ApiVpc::new().await;
    let subnet = vpc.subnet("10.0.1.0/24", "us-west-2b").await;
    vpc.launch("t3.micro", &subnet).await; // IMDS answers for the selected instance only
    let node = vpc.launch("c5.xlarge", &subnet).await;
    vpc.emulator.select_imds(&node.id);
    let client = imds_client(&vpc);
    let primary = vpc.describe(&node.primary_eni).await;

    assert_eq!(get(&client, "/latest/meta-data/instance-id").await, node.id);
    assert_eq!(
        get(&client, "/latest/meta-data/instance-type").await,
        "c5.xlarge"
    );
    assert_eq!(
        get(&client, "/latest/meta-data/placement/availability-zone").await,
        "us-west-2b"
    );
    assert_eq!(
        get(&client, "/latest/meta-data/placement/region").await,
        "us-west-2"
    );
    assert_eq!(
        get(&client, "/latest/meta-data/mac").await,
        primary.mac_address().unwrap()
    );
    assert_eq!(
        get(&client, "/latest/meta-data/local-ipv4").await,
        primary.private_ip_address().unwrap()
    );
    let listing = lines(&get(&client, "/latest/meta-data/").await);
    for key in ["instance-id", "mac", "network/", "placement/"] {
        assert!(listing.contains(&key.to_owned()), "{key} in {listing:?}");
    }
    assert_eq!(
        status(&client, "/latest/meta-data/ami-launch-index").await,
        404
    );
}

#[tokio::test]
async fn per_mac_keys_follow_attach_assign_and_detach() {
    let vpc = ApiVpc::new().await;
    let subnet = vpc.subnet("10.0.1.0/24", "us-west-2a").await;
    let node = vpc.launch("m5.large", &subnet).await;
    vpc.emulator.select_imds(&node.id);
    let client = imds_client(&vpc);
    let primary_mac = mac_of(&vpc, &node.primary_eni).await;

    assert_eq!(get(&client, MACS).await, format!("{primary_mac}/"));
    let key = |mac: &str, key: &str| format!("{MACS}{mac}/{key}");
    assert_eq!(get(&client, &key(&primary_mac, "device-number")).await, "0");
    assert_eq!(
        status(&client, &key(&primary_mac, "network-card")).await,
        404
    );

    // Attach a second ENI: a second MAC with EC2's values.
    let eni = vpc.eni(&subnet).await;
    vpc.attach(&eni, &node.id, 1).await;
    let mac = mac_of(&vpc, &eni).await;
    let mut macs = lines(&get(&client, MACS).await);
    macs.sort();
    let mut expected = vec![format!("{primary_mac}/"), format!("{mac}/")];
    expected.sort();
    assert_eq!(macs, expected);
    for (name, value) in [
        ("device-number", "1".to_owned()),
        ("interface-id", eni.clone()),
        ("subnet-id", subnet.clone()),
        ("subnet-ipv4-cidr-block", "10.0.1.0/24".to_owned()),
        ("vpc-id", vpc.id.clone()),
        ("vpc-ipv4-cidr-blocks", "10.0.0.0/16".to_owned()),
        ("security-group-ids", vpc.sg.clone()),
    ] {
        assert_eq!(get(&client, &key(&mac, name)).await, value, "{name}");
    }
    assert_eq!(status(&client, &key(&mac, "ipv4-prefix")).await, 404);

    // Secondary addresses and a prefix appear as EC2 assigns them, the primary address first.
    vpc.ec2
        .assign_private_ip_addresses()
        .network_interface_id(&eni)
        .secondary_private_ip_address_count(2)
        .send()
        .await
        .expect("AssignPrivateIpAddresses");
    vpc.ec2
        .assign_private_ip_addresses()
        .network_interface_id(&eni)
        .ipv4_prefix_count(1)
        .send()
        .await
        .expect("AssignPrivateIpAddresses with a prefix");
    let described = vpc.describe(&eni).await;
    let ips = addresses(&described);
    assert_eq!(ips.len(), 3);
    assert_eq!(ips[0], described.private_ip_address().unwrap());
    assert_eq!(lines(&get(&client, &key(&mac, "local-ipv4s")).await), ips);
    let assigned_prefixes = prefixes(&described);
    assert_eq!(
        lines(&get(&client, &key(&mac, "ipv4-prefix")).await),
        assigned_prefixes
    );

    // ... and disappear as EC2 unassigns them.
    vpc.ec2
        .unassign_private_ip_addresses()
        .network_interface_id(&eni)
        .private_ip_addresses(&ips[2])
        .send()
        .await
        .expect("UnassignPrivateIpAddresses");
    vpc.ec2
        .unassign_private_ip_addresses()
        .network_interface_id(&eni)
        .ipv4_prefixes(&assigned_prefixes[0])
        .send()
        .await
        .expect("UnassignPrivateIpAddresses of the prefix");
    assert_eq!(
        lines(&get(&client, &key(&mac, "local-ipv4s")).await),
        ips[..2].to_vec()
    );
    assert_eq!(status(&client, &key(&mac, "ipv4-prefix")).await, 404);

    // Detach: the MAC is gone.
    let attachment = described
        .attachment()
        .and_then(|a| a.attachment_id())
        .expect("an attachment")
        .to_owned();
    vpc.ec2
        .detach_network_interface()
        .attachment_id(attachment)
        .send()
        .await
        .expect("DetachNetworkInterface");
    assert_eq!(get(&client, MACS).await, format!("{primary_mac}/"));
    assert_eq!(status(&client, &key(&mac, "device-number")).await, 404);
}

#[tokio::test]
async fn network_card_is_listed_only_for_enis_on_a_non_zero_card() {
    const MULTI_CARD: &str = "c6in.32xlarge";
    let vpc = ApiVpc::new().await;
    let cards = vpc
        .ec2
        .describe_instance_types()
        .instance_types(MULTI_CARD.into())
        .send()
        .await
        .expect("DescribeInstanceTypes")
        .instance_types()[0]
        .network_info()
        .and_then(|n| n.maximum_network_cards())
        .expect("MaximumNetworkCards");
    assert!(cards > 1, "{MULTI_CARD} has {cards} network card(s)");

    let subnet = vpc.subnet("10.0.1.0/24", "us-west-2a").await;
    let node = vpc.launch(MULTI_CARD, &subnet).await;
    vpc.emulator.select_imds(&node.id);
    let client = imds_client(&vpc);
    let eni = vpc.eni(&subnet).await;
    vpc.ec2
        .attach_network_interface()
        .network_interface_id(&eni)
        .instance_id(&node.id)
        .device_index(1)
        .network_card_index(1)
        .send()
        .await
        .expect("AttachNetworkInterface on card 1");
    let mac = mac_of(&vpc, &eni).await;
    let primary_mac = mac_of(&vpc, &node.primary_eni).await;
    assert_eq!(
        get(&client, &format!("{MACS}{mac}/network-card")).await,
        "1"
    );
    assert_eq!(
        get(&client, &format!("{MACS}{mac}/device-number")).await,
        "1"
    );
    assert_eq!(
        status(&client, &format!("{MACS}{primary_mac}/network-card")).await,
        404
    );
}
