//! A real Kubernetes API for the lab: kube-apiserver on etcd (both built or unpacked from Debian
//! by `cargo xtask setup`), on the loopback of the lab node's namespace, where the agent reaches
//! it as it would reach its cluster's. TLS with a CA of the test's own; RBAC on, so the agent
//! runs with deploy/'s ClusterRole and nothing more. The test drives it with curl as an admin.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::netns::Netns;

const ETCD_PORT: u16 = 23790;
const API_PORT: u16 = 16443;
/// The `kubernetes` Service's cluster IP: the first of --service-cluster-ip-range.
const SERVICE_IP: &str = "10.96.0.1";
const ADMIN_TOKEN: &str = "lab-admin-token";
const AGENT_TOKEN: &str = "lab-agent-token";
/// The agent's service account, as deploy/rbac.yaml binds it.
const AGENT_USER: &str = "system:serviceaccount:kube-system:eniflow-agent";
pub const CNINODES: &str = "/apis/vpcresources.k8s.aws/v1alpha1/cninodes";

pub struct KubeApi {
    netns: String,
    /// The address other nodes reach the API at (the `kubernetes` Service's endpoint).
    advertised: Option<String>,
    dir: PathBuf,
    etcd: Child,
    apiserver: Child,
}

/// A binary `cargo xtask setup` put in its cache (Kubernetes', etcd).
pub fn bin(name: &str) -> PathBuf {
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    let path = Path::new(&home).join(".cache/eniflow/bin").join(name);
    assert!(
        path.exists(),
        "{} is missing: `cargo xtask setup` builds it",
        path.display()
    );
    path
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A client certificate for user `cn` in group `org`, signed by the CA in `ca_dir`, written
/// under `dir` as `<file>.crt` and `<file>.key`.
fn client_cert(ca_dir: &Path, dir: &Path, file: &str, cn: &str, org: &str) -> (PathBuf, PathBuf) {
    let key = dir.join(format!("{file}.key"));
    let csr = dir.join(format!("{file}.csr"));
    let crt = dir.join(format!("{file}.crt"));
    let (ca_crt, ca_key) = (ca_dir.join("ca.crt"), ca_dir.join("ca.key"));
    let path = |p: &Path| p.display().to_string();
    openssl(dir, &["genrsa", "-out", &path(&key), "2048"]);
    let subject = format!("/O={org}/CN={cn}");
    openssl(
        dir,
        &[
            "req",
            "-new",
            "-key",
            &path(&key),
            "-subj",
            &subject,
            "-out",
            &path(&csr),
        ],
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &path(&csr),
            "-CA",
            &path(&ca_crt),
            "-CAkey",
            &path(&ca_key),
            "-CAcreateserial",
            "-days",
            "2",
            "-out",
            &path(&crt),
        ],
    );
    (crt, key)
}

impl KubeApi {
    /// Starts etcd and kube-apiserver in `netns` and waits until the API is ready.
    pub fn start(netns: &Netns) -> KubeApi {
        KubeApi::start_at(netns, None)
    }

    /// Like `start`, the API also served at `advertise` (an address of `netns`) for other nodes
    /// and behind the `kubernetes` Service's cluster IP (10.96.0.1) through kube-proxy.
    pub fn start_at(netns: &Netns, advertise: Option<&str>) -> KubeApi {
        let dir = std::env::temp_dir().join(crate::unique_name("kube"));
        std::fs::create_dir_all(&dir).unwrap();
        // A cluster CA and the API server's certificate for 127.0.0.1, signed by it.
        openssl(&dir, &["genrsa", "-out", "ca.key", "2048"]);
        openssl(
            &dir,
            &[
                "req",
                "-x509",
                "-new",
                "-key",
                "ca.key",
                "-days",
                "2",
                "-subj",
                "/CN=lab-ca",
                "-out",
                "ca.crt",
            ],
        );
        openssl(&dir, &["genrsa", "-out", "server.key", "2048"]);
        openssl(
            &dir,
            &[
                "req",
                "-new",
                "-key",
                "server.key",
                "-subj",
                "/CN=kube-apiserver",
                "-out",
                "server.csr",
            ],
        );
        let also = advertise
            .map(|ip| format!(",IP:{ip},IP:{SERVICE_IP}"))
            .unwrap_or_default();
        std::fs::write(
            dir.join("server.ext"),
            format!("subjectAltName=IP:127.0.0.1{also}\nextendedKeyUsage=serverAuth\n"),
        )
        .unwrap();
        openssl(
            &dir,
            &[
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                "server.ext",
                "-out",
                "server.crt",
            ],
        );
        openssl(&dir, &["genrsa", "-out", "sa.key", "2048"]);
        // The API server's identity towards kubelets (exec, logs).
        client_cert(
            &dir,
            &dir,
            "kubelet-client",
            "kube-apiserver-kubelet-client",
            "system:masters",
        );
        std::fs::write(
            dir.join("tokens.csv"),
            format!(
                "{ADMIN_TOKEN},admin,admin,system:masters\n\
                 {AGENT_TOKEN},{AGENT_USER},agent,system:serviceaccounts\n"
            ),
        )
        .unwrap();
        std::fs::write(dir.join("agent-token"), AGENT_TOKEN).unwrap();
        let spawn = |program: PathBuf, args: Vec<String>, log: &str| {
            let log = std::fs::File::create(dir.join(log)).unwrap();
            Command::new("nsenter")
                .arg(format!("--net={}", netns.path()))
                .arg(program)
                .args(args)
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .expect("start")
        };
        let etcd_url = format!("http://127.0.0.1:{ETCD_PORT}");
        let etcd = spawn(
            bin("etcd"),
            vec![
                format!("--data-dir={}", dir.join("etcd").display()),
                format!("--listen-client-urls={etcd_url}"),
                format!("--advertise-client-urls={etcd_url}"),
                format!("--listen-peer-urls=http://127.0.0.1:{}", ETCD_PORT + 10),
            ],
            "etcd.log",
        );
        let file = |name: &str| dir.join(name).display().to_string();
        let apiserver = spawn(
            bin("kube-apiserver"),
            vec![
                format!("--etcd-servers={etcd_url}"),
                format!(
                    "--bind-address={}",
                    if advertise.is_some() {
                        "0.0.0.0"
                    } else {
                        "127.0.0.1"
                    }
                ),
                format!("--advertise-address={}", advertise.unwrap_or("127.0.0.1")),
                format!("--secure-port={API_PORT}"),
                format!("--tls-cert-file={}", file("server.crt")),
                format!("--tls-private-key-file={}", file("server.key")),
                format!("--token-auth-file={}", file("tokens.csv")),
                // Node: kubelets of a cluster node (cluster.rs) act as system:node:<name>.
                "--authorization-mode=Node,RBAC".into(),
                format!("--client-ca-file={}", file("ca.crt")),
                format!(
                    "--kubelet-client-certificate={}",
                    file("kubelet-client.crt")
                ),
                format!("--kubelet-client-key={}", file("kubelet-client.key")),
                // By address: the lab has no DNS, and a node's name must never be looked up.
                "--kubelet-preferred-address-types=InternalIP".into(),
                // As on EKS: node agents' init containers run privileged.
                "--allow-privileged=true".into(),
                format!("--service-account-key-file={}", file("sa.key")),
                format!("--service-account-signing-key-file={}", file("sa.key")),
                "--service-account-issuer=https://eniflow.lab".into(),
                "--service-cluster-ip-range=10.96.0.0/16".into(),
                format!("--cert-dir={}", file("certs")),
            ],
            "kube-apiserver.log",
        );
        let api = KubeApi {
            netns: netns.path(),
            advertised: advertise.map(str::to_owned),
            dir,
            etcd,
            apiserver,
        };
        api.wait_ready();
        api
    }

    /// Starts the API in `netns` with deploy/'s manifests applied and `node` (a Node object) in it.
    pub fn with_node(netns: &Netns, node: Value) -> KubeApi {
        let api = KubeApi::start(netns);
        api.apply_deploy_manifests();
        api.create("/api/v1/nodes", &node.to_string());
        api
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            // The default namespace is made by the API server's own bootstrap, last.
            let answer = self.curl("GET", "/api/v1/namespaces/default", None);
            if matches!(answer, Ok((200, _))) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "kube-apiserver not ready in 120 s; its log: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    pub fn log(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("kube-apiserver.log")).unwrap_or_default();
        log.lines().rev().take(20).collect::<Vec<_>>().join("\n")
    }

    /// The agent's flags for this API, as the service account `eniflow-agent` on node `node`.
    pub fn agent_args(&self, node: &str) -> Vec<String> {
        vec![
            "--kube-api-server".into(),
            format!("https://127.0.0.1:{API_PORT}"),
            "--kube-token-file".into(),
            self.dir.join("agent-token").display().to_string(),
            "--kube-ca-file".into(),
            self.dir.join("ca.crt").display().to_string(),
            "--node-name".into(),
            node.into(),
        ]
    }

    /// The API's address: where other nodes reach it when it is advertised, else the
    /// loopback of its namespace.
    pub fn url(&self) -> String {
        let host = self.advertised.as_deref().unwrap_or("127.0.0.1");
        format!("https://{host}:{API_PORT}")
    }

    /// The cluster CA's certificate and key (components' certificates, service-account roots).
    pub fn ca(&self) -> (PathBuf, PathBuf) {
        (self.dir.join("ca.crt"), self.dir.join("ca.key"))
    }

    /// The key that signs service-account tokens (controller-manager's token controller).
    pub fn service_account_key(&self) -> PathBuf {
        self.dir.join("sa.key")
    }

    /// A kubeconfig for user `cn` in group `org` (a client certificate the cluster CA signs),
    /// written under `dir` as `<file>.kubeconfig`.
    pub fn kubeconfig(&self, dir: &Path, file: &str, cn: &str, org: &str) -> PathBuf {
        let (crt, key) = client_cert(&self.dir, dir, file, cn, org);
        let (ca_crt, _) = self.ca();
        let path = |p: &Path| p.display().to_string();
        let config = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{ "name": "lab", "cluster": {
                "server": self.url(), "certificate-authority": path(&ca_crt) } }],
            "users": [{ "name": cn, "user": {
                "client-certificate": path(&crt), "client-key": path(&key) } }],
            "contexts": [{ "name": "lab", "context": { "cluster": "lab", "user": cn } }],
            "current-context": "lab",
        });
        let kubeconfig = dir.join(format!("{file}.kubeconfig"));
        std::fs::write(&kubeconfig, config.to_string()).unwrap();
        kubeconfig
    }

    /// An admin's request (curl, inside the namespace): the status and the JSON answer.
    /// `body` is JSON or YAML (`---`-free), sent with the content type `method` wants.
    pub fn call(&self, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
        self.admin().call(method, path, body)
    }

    fn curl(&self, method: &str, path: &str, body: Option<&str>) -> Result<(u16, Value), String> {
        self.admin().curl(method, path, body)
    }

    /// An admin's client of this API that other threads may own (the lab's controllers).
    pub fn admin(&self) -> Admin {
        Admin {
            netns: self.netns.clone(),
            ca: self.dir.join("ca.crt"),
        }
    }

    /// Creates an object (JSON or one YAML document) in the collection at `path`.
    pub fn create(&self, path: &str, object: &str) -> Value {
        let (status, answer) = self.call("POST", path, Some(object));
        assert!(
            status == 201 || status == 200,
            "POST {path}: {status} {answer}"
        );
        answer
    }

    /// Applies deploy/'s manifests the agent needs in a cluster (its RBAC, the ENIConfig CRD).
    pub fn apply_deploy_manifests(&self) {
        for file in ["rbac.yaml", "eniconfig-crd.yaml"] {
            self.apply_deploy_file(file);
        }
    }

    /// Applies one of deploy/'s files, each document to the collection its kind belongs to.
    pub fn apply_deploy_file(&self, file: &str) {
        let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
        let text = std::fs::read_to_string(deploy.join(file)).unwrap();
        for doc in text.split("\n---\n").filter(|d| d.contains("kind:")) {
            let kind = doc
                .lines()
                .find_map(|l| l.strip_prefix("kind: "))
                .unwrap_or_else(|| panic!("{file}: a document without a top-level kind"));
            let path = match kind.trim() {
                "ServiceAccount" => "/api/v1/namespaces/kube-system/serviceaccounts",
                "ClusterRole" => "/apis/rbac.authorization.k8s.io/v1/clusterroles",
                "ClusterRoleBinding" => "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
                "CustomResourceDefinition" => {
                    "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
                }
                other => panic!("{file}: no collection known for kind {other}"),
            };
            self.create(path, doc);
        }
    }

    /// Creates an ENIConfig (no security groups: the node's), retrying while its CRD is being
    /// established.
    pub fn create_eni_config(&self, name: &str, subnet: &str, security_groups: &[String]) {
        let object = serde_json::json!({
            "apiVersion": "crd.k8s.amazonaws.com/v1alpha1",
            "kind": "ENIConfig",
            "metadata": { "name": name },
            "spec": { "subnet": subnet, "securityGroups": security_groups },
        })
        .to_string();
        let what = format!("ENIConfig {name}");
        self.create_custom(
            "/apis/crd.k8s.amazonaws.com/v1alpha1/eniconfigs",
            &object,
            &what,
        );
    }

    /// Creates a custom object in the collection at `path`, retrying while its CRD is being
    /// established (`what` names it in the failure).
    fn create_custom(&self, path: &str, object: &str, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (status, answer) = self.call("POST", path, Some(object));
            if status == 201 {
                return;
            }
            assert!(Instant::now() < deadline, "{what}: {status} {answer}");
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// Installs the CNINode CRD (tests/lab/manifests: on EKS it is EKS's own) and creates the
    /// node's CNINode with `features`, as the VPC resource controller creates it; retries while
    /// the CRD is being established.
    pub fn create_cninode(&self, node: &str, features: Value) {
        install_cninode_crd(&self.admin());
        let object = serde_json::json!({
            "apiVersion": "vpcresources.k8s.aws/v1alpha1",
            "kind": "CNINode",
            "metadata": { "name": node },
            "spec": { "features": features },
        })
        .to_string();
        self.create_custom(CNINODES, &object, &format!("CNINode {node}"));
    }

    /// Watches the collection at `path` (a query string allowed) for `seconds`, in a thread:
    /// every event the API sent, in order, the first one the objects as they were.
    pub fn watch(&self, path: &str, seconds: u32) -> std::thread::JoinHandle<Vec<Value>> {
        let curl = self.admin().watch_stream(path, "", seconds);
        std::thread::spawn(move || {
            let out = curl.wait_with_output().expect("run curl");
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter_map(|l| serde_json::from_str(l).ok())
                .collect()
        })
    }

    /// An object's annotations.
    pub fn annotations(&self, path: &str) -> Value {
        let (status, object) = self.call("GET", path, None);
        assert_eq!(status, 200, "GET {path}: {object}");
        object["metadata"]["annotations"].clone()
    }
}

impl Drop for KubeApi {
    fn drop(&mut self) {
        for child in [&mut self.apiserver, &mut self.etcd] {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::env::var_os("ENIFLOW_KEEP_KUBE").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Installs the CNINode CRD (tests/lab/manifests: on EKS it is EKS's own); once is enough.
pub fn install_cninode_crd(api: &Admin) {
    let crd = Path::new(env!("CARGO_MANIFEST_DIR")).join("lab/manifests/cninode-crd.yaml");
    let crd = std::fs::read_to_string(crd).unwrap();
    let (status, answer) = api.call(
        "POST",
        "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
        Some(&crd),
    );
    assert!(
        status == 201 || status == 409,
        "the CNINode CRD: {status} {answer}"
    );
}

/// The API as its admin, through curl in the API's namespace.
#[derive(Clone, Debug)]
pub struct Admin {
    netns: String,
    ca: PathBuf,
}

impl Admin {
    /// An admin's request (curl, inside the namespace): the status and the JSON answer.
    /// `body` is JSON or YAML (`---`-free), sent with the content type `method` wants.
    pub fn call(&self, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
        self.curl(method, path, body)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    fn curl(&self, method: &str, path: &str, body: Option<&str>) -> Result<(u16, Value), String> {
        let content_type = match (method, body) {
            ("PATCH", _) => "application/merge-patch+json",
            (_, Some(b)) if b.trim_start().starts_with('{') => "application/json",
            _ => "application/yaml",
        };
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", self.netns))
            .args([
                "curl",
                "--http1.1",
                "-sS",
                "--max-time",
                "10",
                "-o",
                "-",
                "-w",
                "\n%{http_code}",
            ])
            .arg("--cacert")
            .arg(&self.ca)
            .args(["-H", &format!("Authorization: Bearer {ADMIN_TOKEN}")])
            .args(["-H", &format!("Content-Type: {content_type}")])
            .args(["-X", method])
            .arg(format!("https://127.0.0.1:{API_PORT}{path}"));
        if let Some(body) = body {
            cmd.args(["--data-binary", body]);
        }
        let out = cmd.output().expect("run curl");
        if !out.status.success() {
            return Err(format!(
                "curl {method} {path}: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let text = String::from_utf8_lossy(&out.stdout);
        let (json, status) = text.trim_end().rsplit_once('\n').unwrap_or(("", &text));
        Ok((
            status.trim().parse().unwrap_or(0),
            serde_json::from_str(json).unwrap_or(Value::Null),
        ))
    }

    /// A watch of the collection at `path` (a query string allowed) from `resource_version`:
    /// curl streaming its events, one JSON object a line, until the API ends it (`seconds`).
    pub fn watch_stream(&self, path: &str, resource_version: &str, seconds: u32) -> Child {
        let separator = if path.contains('?') { '&' } else { '?' };
        Command::new("nsenter")
            .arg(format!("--net={}", self.netns))
            .args(["curl", "--http1.1", "-sS", "-N", "--max-time"])
            .arg((seconds + 10).to_string())
            .arg("--cacert")
            .arg(&self.ca)
            .args(["-H", &format!("Authorization: Bearer {ADMIN_TOKEN}")])
            .arg(format!(
                "https://127.0.0.1:{API_PORT}{path}{separator}watch=1&resourceVersion={resource_version}&timeoutSeconds={seconds}"
            ))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("run curl")
    }
}
