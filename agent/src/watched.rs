//! Objects the agent keeps up to date with instead of reading once: a collection (its Node by a
//! field selector, the ENIConfigs) listed, then watched from the list's resourceVersion, listed
//! again when the API says that version is gone (410), and retried with a bounded backoff when
//! the API cannot be reached. Each change publishes the whole collection, by name.
//!
//! Hand-written rather than kube-runtime's watcher: three small collections need about a
//! hundred lines on the client the agent already has, where kube-runtime and k8s-openapi
//! would add 52 s to a clean debug build and 104 s to a release one (measured on this
//! project's machine) for types the agent does not use.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use hyper::StatusCode;
use serde_json::Value;
use tokio::sync::watch;

use crate::kube::Kube;

/// A collection as last seen: objects by `metadata.name`.
pub type Objects = Arc<BTreeMap<String, Value>>;

const BACKOFF_FIRST: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// Follows the collection at `path` (a query such as a fieldSelector allowed; `what` names it
/// in logs) in the background until every receiver is gone. The receiver holds None until the
/// first list has been read.
pub fn follow(kube: Arc<Kube>, path: String, what: String) -> watch::Receiver<Option<Objects>> {
    let (publish, receiver) = watch::channel(None);
    tokio::spawn(async move {
        let mut wait = BACKOFF_FIRST;
        let backoff = |e: &dyn std::fmt::Display, wait: &mut Duration| {
            tracing::warn!("{what}: {e}; again in {wait:?}");
            let now = *wait;
            *wait = (*wait * 2).min(BACKOFF_MAX);
            now
        };
        while !publish.is_closed() {
            let list = match kube.get(&path).await {
                Ok(list) => list.unwrap_or(Value::Null),
                Err(e) => {
                    tokio::time::sleep(backoff(&e, &mut wait)).await;
                    continue;
                }
            };
            let mut version = list["metadata"]["resourceVersion"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            let mut objects: BTreeMap<String, Value> = list["items"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|o| Some((name(o)?.to_owned(), o.clone())))
                .collect();
            publish.send_replace(Some(Arc::new(objects.clone())));
            wait = BACKOFF_FIRST;
            // Watch from the list's version until that version is gone.
            loop {
                let from = version.clone();
                let outcome = kube
                    .watch(&path, &from, |event| {
                        if let Some(v) = event.object["metadata"]["resourceVersion"].as_str() {
                            version = v.to_owned();
                        }
                        let changed = match (event.kind.as_str(), name(&event.object)) {
                            ("ADDED" | "MODIFIED", Some(n)) => {
                                objects.insert(n.to_owned(), event.object.clone());
                                true
                            }
                            ("DELETED", Some(n)) => objects.remove(n).is_some(),
                            _ => false, // a bookmark: only the version moves
                        };
                        if changed {
                            publish.send_replace(Some(Arc::new(objects.clone())));
                        }
                        !publish.is_closed()
                    })
                    .await;
                match outcome {
                    Ok(()) if publish.is_closed() => return,
                    Ok(()) => wait = BACKOFF_FIRST, // the API ended this watch: go on
                    Err(e) if e.status == Some(StatusCode::GONE) => {
                        tracing::info!("{what}: version {version} is gone; listing again");
                        break;
                    }
                    Err(e) => tokio::time::sleep(backoff(&e, &mut wait)).await,
                }
            }
        }
    });
    receiver
}

fn name(object: &Value) -> Option<&str> {
    object["metadata"]["name"].as_str()
}
