//! `eniflow-agent status`: a human summary for on-call. The running agent's view (pool, EC2's
//! answers, the last errors, the pods that drop the most) when it answers on its listener; the
//! pinned maps always, so it works with the agent stopped.

use std::{net::SocketAddr, time::Duration};

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::TokioExecutor,
};
use serde_json::Value;

use crate::datapath::{self, DatapathError, Pins};

/// How long the agent gets to answer before the summary falls back to the maps.
const AGENT_TIMEOUT: Duration = Duration::from_secs(2);

/// `GET http://<agent><path>` as JSON.
async fn get(agent: SocketAddr, path: &str) -> Result<Value, String> {
    let client: Client<HttpConnector, Empty<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let uri: hyper::Uri = format!("http://{agent}{path}")
        .parse()
        .map_err(|e| format!("{e}"))?;
    let answer = tokio::time::timeout(AGENT_TIMEOUT, async {
        let response = client.get(uri).await.map_err(|e| format!("{e}"))?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("{e}"))?
            .to_bytes();
        if !status.is_success() {
            return Err(format!("HTTP {status}: {}", String::from_utf8_lossy(&body)));
        }
        serde_json::from_slice(&body).map_err(|e| format!("not JSON: {e}"))
    })
    .await;
    answer.unwrap_or_else(|_| Err(format!("no answer within {AGENT_TIMEOUT:?}")))
}

/// Prints the summary: the agent's part when it answers, then the pinned maps.
pub async fn print(pins: &Pins, agent: SocketAddr) -> Result<(), DatapathError> {
    match get(agent, "/v1/status").await {
        Ok(status) => {
            println!("agent: answering on {agent}");
            print_agent(&status);
        }
        Err(e) => println!("agent: not answering on {agent} ({e}); the pinned maps only"),
    }
    datapath::status::print(pins)
}

fn print_agent(status: &Value) {
    let pool = &status["pool"];
    if pool.is_null() {
        println!("pool: none (--ipam=false)");
    } else {
        let a = &pool["addresses"];
        println!(
            "pool: {} ENI(s); addresses {} assigned, {} warm, {} cooling, {} leaving; max pods {}",
            pool["enis"], a["assigned"], a["warm"], a["cooling"], a["leaving"], pool["max_pods"]
        );
        let calls: Vec<String> = pool["ec2_calls"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| {
                format!(
                    "{} {} {}",
                    c["action"].as_str().unwrap_or("?"),
                    c["outcome"].as_str().unwrap_or("?"),
                    c["calls"]
                )
            })
            .collect();
        let failed = pool["ec2_calls"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|c| c["outcome"] != "ok")
            .count();
        println!(
            "EC2: {} ({failed} failing action/outcome pair(s))",
            if calls.is_empty() {
                "no calls yet".to_owned()
            } else {
                calls.join(", ")
            }
        );
    }
    let errors = status["last_errors"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if errors.is_empty() {
        println!("last errors: none");
    } else {
        println!("last errors (oldest first):");
        for e in errors {
            println!(
                "  {} ms: {}",
                e["at_ms"],
                e["error"].as_str().unwrap_or("?")
            );
        }
    }
    let droppers = status["top_droppers"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if droppers.is_empty() {
        println!("top droppers: none");
    } else {
        println!("top droppers:");
        for d in droppers {
            let reasons: Vec<String> = d["drops"]
                .as_object()
                .into_iter()
                .flatten()
                .filter(|(_, n)| n.as_u64().unwrap_or(0) > 0)
                .map(|(reason, n)| format!("{reason} {n}"))
                .collect();
            println!(
                "  {} {}",
                d["address"].as_str().unwrap_or("?"),
                reasons.join(", ")
            );
        }
    }
}
