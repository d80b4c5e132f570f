//! Kubernetes Events on the node's pods and its Node, as operators read them with
//! `kubectl describe`: why a pod has no address (EC2 refused for lack of a permission, naming
//! the action; the subnet is full; the node's ENIs or max pods are used up), that a
//! security-group pod waits for its branch ENI (Normal: the expected race), and the node's ENI
//! attach failures and limits.
//!
//! Aggregated as kubelet's recorder does: a repeat of the same event on the same object
//! within AGGREGATE_FOR bumps the count of the one Event (written at most every FLUSH_EVERY)
//! instead of creating another; each object gets at most BURST new Events, then one per
//! REFILL_EVERY. Recording never waits on the API: events go through a bounded queue to a
//! background task, and are dropped when it is full.

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::kube::Kube;

const AGGREGATE_FOR: Duration = Duration::from_secs(600);
const FLUSH_EVERY: Duration = Duration::from_secs(10);
const BURST: u32 = 25;
const REFILL_EVERY: Duration = Duration::from_secs(300);
const QUEUE: usize = 256;
const COMPONENT: &str = "eniflow-agent";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    Normal,
    Warning,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Normal => "Normal",
            Kind::Warning => "Warning",
        }
    }
}

/// What an event is about.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Object {
    Node,
    Pod { namespace: String, name: String },
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Key {
    object: Object,
    kind: Kind,
    reason: &'static str,
    message: String,
}

/// Records events for the node `node`; cheap to clone.
#[derive(Clone)]
pub struct Recorder {
    queue: mpsc::Sender<Key>,
}

impl Recorder {
    /// Starts the task that writes the events through `kube`.
    pub fn start(kube: Arc<Kube>, node: String) -> Recorder {
        let (queue, received) = mpsc::channel(QUEUE);
        tokio::spawn(Writer::new(kube, node).run(received));
        Recorder { queue }
    }

    pub fn pod(
        &self,
        namespace: &str,
        name: &str,
        kind: Kind,
        reason: &'static str,
        message: String,
    ) {
        let object = Object::Pod {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        };
        self.send(object, kind, reason, message);
    }

    pub fn node(&self, kind: Kind, reason: &'static str, message: String) {
        self.send(Object::Node, kind, reason, message);
    }

    fn send(&self, object: Object, kind: Kind, reason: &'static str, message: String) {
        let key = Key {
            object,
            kind,
            reason,
            message,
        };
        if self.queue.try_send(key).is_err() {
            tracing::debug!("events: the queue is full; an event is dropped");
        }
    }
}

/// One Event written, and repeats not yet written.
struct Written {
    name: String,
    namespace: String,
    count: u64,
    written_count: u64,
    first: Instant,
    last_write: Instant,
}

/// New Events an object may still get (kubelet's spam filter: a token bucket per object).
struct Budget {
    tokens: u32,
    refilled: Instant,
}

struct Writer {
    kube: Arc<Kube>,
    node: String,
    written: HashMap<Key, Written>,
    budgets: HashMap<Object, Budget>,
}

impl Writer {
    fn new(kube: Arc<Kube>, node: String) -> Writer {
        Writer {
            kube,
            node,
            written: HashMap::new(),
            budgets: HashMap::new(),
        }
    }

    async fn run(mut self, mut received: mpsc::Receiver<Key>) {
        let mut flush = tokio::time::interval(FLUSH_EVERY);
        loop {
            tokio::select! {
                key = received.recv() => match key {
                    Some(key) => self.record(key).await,
                    None => return,
                },
                _ = flush.tick() => self.flush().await,
            }
        }
    }

    async fn record(&mut self, key: Key) {
        let now = Instant::now();
        self.written
            .retain(|_, w| now.duration_since(w.first) < AGGREGATE_FOR);
        if let Some(w) = self.written.get_mut(&key) {
            w.count += 1;
            return; // the flush writes the count
        }
        if !self.spend(&key.object, now) {
            tracing::debug!(
                "events: {:?} had its share of events; {} dropped",
                key.object,
                key.reason
            );
            return;
        }
        match self.create(&key).await {
            Ok((name, namespace)) => {
                let w = Written {
                    name,
                    namespace,
                    count: 1,
                    written_count: 1,
                    first: now,
                    last_write: now,
                };
                self.written.insert(key, w);
            }
            Err(e) => tracing::warn!(
                "events: cannot record {} ({}): {e}",
                key.reason,
                key.message
            ),
        }
    }

    fn spend(&mut self, object: &Object, now: Instant) -> bool {
        let budget = self.budgets.entry(object.clone()).or_insert(Budget {
            tokens: BURST,
            refilled: now,
        });
        let refills =
            (now.duration_since(budget.refilled).as_secs() / REFILL_EVERY.as_secs()) as u32;
        if refills > 0 {
            budget.tokens = (budget.tokens + refills).min(BURST);
            budget.refilled = now;
        }
        if budget.tokens == 0 {
            return false;
        }
        budget.tokens -= 1;
        true
    }

    /// Writes the counts of repeated events.
    async fn flush(&mut self) {
        let now = Instant::now();
        for w in self.written.values_mut() {
            if w.count == w.written_count || now.duration_since(w.last_write) < FLUSH_EVERY {
                continue;
            }
            let path = format!("/api/v1/namespaces/{}/events/{}", w.namespace, w.name);
            let patch = json!({ "count": w.count, "lastTimestamp": timestamp() });
            match self.kube.merge_patch(&path, &patch).await {
                Ok(_) => {
                    w.written_count = w.count;
                    w.last_write = now;
                }
                Err(e) => tracing::warn!("events: cannot update {}: {e}", w.name),
            }
        }
    }

    /// Creates the Event; its (name, namespace).
    async fn create(&self, key: &Key) -> Result<(String, String), crate::kube::KubeError> {
        let (involved, namespace) = match &key.object {
            // kubelet's convention, which `kubectl describe node` looks up: the Node's events in
            // the default namespace, with its name as uid.
            Object::Node => (
                json!({ "apiVersion": "v1", "kind": "Node", "name": self.node, "uid": self.node }),
                "default".to_owned(),
            ),
            Object::Pod { namespace, name } => {
                let path = format!("/api/v1/namespaces/{namespace}/pods/{name}");
                // `kubectl describe pod` finds the pod's events by its uid.
                let uid = match self.kube.get(&path).await? {
                    Some(pod) => pod["metadata"]["uid"].clone(),
                    None => Value::Null,
                };
                let involved = json!({
                    "apiVersion": "v1", "kind": "Pod",
                    "namespace": namespace, "name": name, "uid": uid,
                });
                (involved, namespace.clone())
            }
        };
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        let object_name = involved["name"].as_str().unwrap_or_default();
        let name = format!("{object_name}.{nanos:x}");
        let now = timestamp();
        let event = json!({
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": { "name": name, "namespace": namespace },
            "involvedObject": involved,
            "type": key.kind.as_str(),
            "reason": key.reason,
            "message": key.message,
            "source": { "component": COMPONENT, "host": self.node },
            "reportingComponent": COMPONENT,
            "reportingInstance": self.node,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        });
        self.kube
            .post(&format!("/api/v1/namespaces/{namespace}/events"), &event)
            .await?;
        Ok((name, namespace))
    }
}

/// Now, as the API's timestamps are written (RFC 3339, whole seconds, UTC).
fn timestamp() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    aws_sdk_ec2::primitives::DateTime::from_secs(secs as i64)
        .fmt(aws_sdk_ec2::primitives::DateTimeFormat::DateTime)
        .unwrap_or_default()
}
