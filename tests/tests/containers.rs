//! The images of deploy/container in real containers, as the article deploys
//! Mosquitto: built by deploy/container/build.sh, run on a user-defined Docker
//! network (brokers reached by container name) with `--memory 128m`, an
//! arbitrary UID with GID 0 and a read-only root filesystem, as OpenShift's
//! restricted policy runs them. Clients are Debian's mosquitto_pub and
//! mosquitto_sub on this machine, through ports published on 127.0.0.1.
//!
//! Also here: the offline validation of deploy/kubernetes and deploy/openshift.
#![allow(clippy::unwrap_used)] // a test binary: unwrap is an assertion

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use snigate_shared::certs::DevCa;
use snigate_shared::testing::{STEP, TempDir, tool, with_hosts_file};

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
/// OpenShift gives a pod a UID from its namespace's range and GID 0.
const ARBITRARY_USER: &str = "1000170000:0";
/// The article's image size, 7 MB: both images are under it (docs/deploy.md
/// has the sizes and what the broker's costs).
const IMAGE_SIZE_LIMIT: u64 = 7_000_000;
/// The router's drain timeout in the drain test.
const DRAIN: Duration = Duration::from_secs(5);

fn docker() -> Option<PathBuf> {
    tool("docker", "docker.io")
}

fn run(program: &Path, args: &[&str]) -> Output {
    Command::new(program).args(args).output().unwrap()
}

fn docker_ok(args: &[&str]) -> String {
    let out = run(&docker().unwrap(), args);
    assert!(out.status.success(), "docker {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// deploy/container/build.sh, once per test run; its output (the image sizes).
fn images() -> &'static str {
    static BUILT: OnceLock<String> = OnceLock::new();
    BUILT.get_or_init(|| {
        let out = Command::new(format!("{ROOT}/deploy/container/build.sh"))
            .current_dir(ROOT)
            .stderr(Stdio::inherit())
            .output()
            .unwrap();
        assert!(out.status.success(), "build.sh: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    })
}

/// A unique name per test and process, for containers and networks: the PID
/// and the time, as a PID is reused by a later run.
fn unique(name: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("snigate-test-{}-{nanos:x}-{name}", std::process::id())
}

/// A client process of the test's, killed on drop, so that a failed assertion
/// leaves no mosquitto_sub behind.
struct Client(Option<Child>);

impl Client {
    fn spawn(command: &mut Command) -> Self {
        Self(Some(command.spawn().unwrap()))
    }

    fn running(&mut self) -> bool {
        self.0.as_mut().is_some_and(|c| c.try_wait().unwrap().is_none())
    }

    fn output(mut self) -> Output {
        self.0.take().unwrap().wait_with_output().unwrap()
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A Docker network of the test's, removed on drop.
struct Network(String);

impl Network {
    fn new(name: &str) -> Self {
        let name = unique(name);
        docker_ok(&["network", "create", &name]);
        Self(name)
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        let _ = Command::new(docker().unwrap())
            .args(["network", "rm", &self.0])
            .output();
    }
}

/// A container of the test's, removed (by name, which is ours) on drop.
struct Container {
    name: String,
}

impl Container {
    /// `docker run -d` with the restricted settings, `extra` arguments before
    /// the image, and `ports` published on 127.0.0.1.
    fn start(network: &Network, name: &str, image: &str, ports: &[u16], extra: &[&str]) -> Self {
        let name = format!("{}-{name}", network.0);
        let mut args: Vec<String> = [
            "run",
            "-d",
            "--name",
            &name,
            "--network",
            &network.0,
            "--memory",
            "128m",
            "--user",
            ARBITRARY_USER,
            "--read-only",
        ]
        .map(str::to_owned)
        .to_vec();
        for port in ports {
            args.push("-p".into());
            args.push(format!("127.0.0.1::{port}"));
        }
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        args.push(image.to_owned());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        docker_ok(&args);
        let container = Self { name };
        container.wait_for_log("listening on");
        container
    }

    /// Where the container's `port` is published on 127.0.0.1.
    fn port(&self, port: u16) -> String {
        let mapped = docker_ok(&["port", &self.name, &format!("{port}/tcp")]);
        let first = mapped.lines().next().unwrap();
        first.rsplit(':').next().unwrap().to_owned()
    }

    fn logs(&self) -> String {
        let out = run(&docker().unwrap(), &["logs", &self.name]);
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
    }

    fn wait_for_log(&self, needle: &str) -> String {
        let deadline = Instant::now() + STEP * 3;
        while Instant::now() < deadline {
            let logs = self.logs();
            if let Some(line) = logs.lines().find(|l| l.contains(needle)) {
                return line.to_owned();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("{}: no log line with {needle:?}:\n{}", self.name, self.logs());
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = Command::new(docker().unwrap()).args(["rm", "-f", &self.name]).output();
    }
}

/// What the tests need: Docker, Debian's MQTT clients, unshare. `None` (a loud
/// skip outside CI, a failure under CI=true) when one is missing.
fn tools() -> Option<(PathBuf, PathBuf)> {
    docker()?;
    tool("unshare", "util-linux")?;
    Some((
        tool("mosquitto_pub", "mosquitto-clients")?,
        tool("mosquitto_sub", "mosquitto-clients")?,
    ))
}

fn pub_args<'a>(port: &'a str, user: &'a str, password: &'a str) -> Vec<&'a str> {
    vec!["-h", "127.0.0.1", "-p", port, "-u", user, "-P", password]
}

#[test]
fn the_images_are_small_and_carry_what_they_need() {
    if docker().is_none() {
        return;
    }
    let report = images();
    for image in ["snigate-router:dev", "snigate-broker:dev"] {
        let size: u64 = docker_ok(&["image", "inspect", "--format", "{{.Size}}", image])
            .parse()
            .unwrap();
        eprintln!("{image}: {size} bytes");
        assert!(
            size <= IMAGE_SIZE_LIMIT,
            "{image} is {size} bytes, over {IMAGE_SIZE_LIMIT} ({report})"
        );
        let user = docker_ok(&["image", "inspect", "--format", "{{.Config.User}}", image]);
        assert_eq!(user, "65532:0", "{image} runs as a non-root user by default");
    }
}

#[test]
fn the_articles_default_deployment_through_the_router() {
    let Some((pub_, _)) = tools() else { return };
    images();
    let dir = TempDir::new();
    let network = Network::new("default");
    // The image's default route goes to `snigate-broker:8883`.
    let broker = Container::start(
        &network,
        "broker",
        "snigate-broker:dev",
        &[],
        &["--network-alias", "snigate-broker"],
    );
    let router = Container::start(&network, "router", "snigate-router:dev", &[8443, 9090], &[]);
    broker.wait_for_log("USING A BUILT-IN DEFAULT FILE");

    // The article's `oc cp` of the CA, then its test. Its --insecure was for
    // a certificate naming acme.com; the image's names localhost, so a client
    // on this machine verifies it.
    let ca = dir.path("ca.crt");
    docker_ok(&[
        "cp",
        &format!("{}:/etc/snigate/tls/ca.crt", broker.name),
        ca.to_str().unwrap(),
    ]);
    let port = router.port(8443);
    let ca = ca.to_str().unwrap();
    let out = run(
        &pub_,
        &[
            "-t",
            "foo",
            "-m",
            "text",
            "--cafile",
            ca,
            "-u",
            "admin",
            "-P",
            "admin",
            "--host",
            "localhost",
            "--port",
            &port,
        ],
    );
    assert!(out.status.success(), "{out:?}");
    let out = run(
        &pub_,
        &[
            "-t",
            "foo",
            "-m",
            "text",
            "--cafile",
            ca,
            "-u",
            "admin",
            "-P",
            "nope",
            "--host",
            "localhost",
            "--port",
            &port,
        ],
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not authorised"),
        "{out:?}"
    );
    broker.wait_for_log("user=\"admin\"");
}

/// A directory with a mosquitto_passwd file holding `users`.
fn password_dir(dir: &TempDir, name: &str, users: &[(&str, &str)]) -> PathBuf {
    let auth = dir.path(name);
    std::fs::create_dir_all(&auth).unwrap();
    write_passwd(&auth.join("passwd"), users);
    auth
}

fn write_passwd(path: &Path, users: &[(&str, &str)]) {
    // Users already there keep their line (a new hash would be a changed
    // password, and end their sessions, as Mosquitto does on reload).
    let mut text = std::fs::read_to_string(path).unwrap_or_default();
    for (user, password) in users {
        let salt = snigate_broker::auth::passwd::new_salt().unwrap();
        let hash = snigate_broker::auth::passwd::hash_pbkdf2(password.as_bytes(), &salt, 1000);
        text.push_str(&format!("{user}:{hash}\n"));
    }
    // Rewritten in place: a bind mount of the file keeps its inode.
    std::fs::write(path, text).unwrap();
    // Readable by the container's arbitrary UID.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644)).unwrap();
}

#[test]
fn a_mounted_password_file_replaces_the_default_user_and_reloads_on_sighup() {
    let Some((pub_, sub)) = tools() else { return };
    images();
    let dir = TempDir::new();
    let auth = password_dir(&dir, "auth", &[("foo", "foo")]);
    let network = Network::new("passwd");
    let mount = format!("{}:/etc/snigate/auth:ro", auth.display());
    let broker = Container::start(&network, "broker", "snigate-broker:dev", &[1883], &["-v", &mount]);
    let port = broker.port(1883);

    // The article's second deployment: the new user works, the image's is refused.
    let out = run(
        &pub_,
        &[pub_args(&port, "foo", "foo"), vec!["-t", "t", "-m", "x"]].concat(),
    );
    assert!(out.status.success(), "{out:?}");
    let out = run(
        &pub_,
        &[pub_args(&port, "admin", "admin"), vec!["-t", "t", "-m", "x"]].concat(),
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not authorised"),
        "{out:?}"
    );

    // A connected client stays through a reload that adds a user.
    let subscriber = Client::spawn(
        Command::new(&sub)
            .args(pub_args(&port, "foo", "foo"))
            .args(["-t", "reload/#", "-C", "1", "-W", "20", "-i", "stays"])
            .stdout(Stdio::piped()),
    );
    broker.wait_for_log("client_id=\"stays\"");
    write_passwd(&auth.join("passwd"), &[("carol", "carol")]);
    docker_ok(&["kill", "-s", "HUP", &broker.name]);
    // The broker also watches the file; the signal's own reload says so.
    let reload = broker.wait_for_log("trigger=\"SIGHUP\"");
    assert!(reload.contains("reloaded"), "{reload}");
    let out = run(
        &pub_,
        &[pub_args(&port, "carol", "carol"), vec!["-t", "reload/x", "-m", "after"]].concat(),
    );
    assert!(out.status.success(), "the added user logs in: {out:?}");
    let got = subscriber.output();
    assert_eq!(
        String::from_utf8_lossy(&got.stdout),
        "after\n",
        "the subscriber was not dropped"
    );
}

#[test]
fn environment_variables_configure_without_a_file_and_over_one() {
    let Some((pub_, _)) = tools() else { return };
    images();
    let network = Network::new("env");
    // No file at all: listeners and policy from the environment.
    let bare = Container::start(
        &network,
        "bare",
        "snigate-broker:dev",
        &[11883],
        &[
            "-e",
            "SNIGATE_BROKER_CONFIG=",
            "-e",
            "SNIGATE_BROKER_LISTEN=0.0.0.0:11883",
            "-e",
            "SNIGATE_BROKER_ALLOW_ANONYMOUS=true",
        ],
    );
    let out = run(
        &pub_,
        &["-h", "127.0.0.1", "-p", &bare.port(11883), "-t", "t", "-m", "anonymous"],
    );
    assert!(out.status.success(), "{out:?}");
    // The image's file, and a variable over it: the variable wins.
    let both = Container::start(
        &network,
        "both",
        "snigate-broker:dev",
        &[1883],
        &["-e", "SNIGATE_BROKER_ALLOW_ANONYMOUS=true"],
    );
    let out = run(
        &pub_,
        &["-h", "127.0.0.1", "-p", &both.port(1883), "-t", "t", "-m", "anonymous"],
    );
    assert!(out.status.success(), "environment over file: {out:?}");
    both.wait_for_log("USING A BUILT-IN DEFAULT FILE");
}

/// `mosquitto_pub`/`mosquitto_sub` with `hosts` over /etc/hosts, in a mount
/// namespace of their own (docs/testbed.md).
fn with_hosts(hosts: &Path, program: &Path, args: &[&str]) -> Output {
    with_hosts_file(hosts, program).unwrap().args(args).output().unwrap()
}

#[test]
fn the_router_routes_by_sni_to_brokers_by_container_name_and_drains_on_stop() {
    let Some((pub_, sub)) = tools() else { return };
    images();
    let dir = TempDir::new();
    let network = Network::new("sni");
    let ca = DevCa::generate("test CA", 1).unwrap();
    let ca_file = dir.path("ca.crt");
    std::fs::write(&ca_file, &ca.cert_pem).unwrap();
    let mut brokers = Vec::new();
    for (name, host) in [("a", "broker-a.test"), ("b", "broker-b.test")] {
        let tls = dir.path(&format!("tls-{name}"));
        std::fs::create_dir_all(&tls).unwrap();
        let (cert, key) = ca.issue_server(&[host.to_owned()], 1).unwrap();
        std::fs::write(tls.join("tls.crt"), cert).unwrap();
        std::fs::write(tls.join("tls.key"), key).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(tls.join("tls.key"), std::fs::Permissions::from_mode(0o644)).unwrap();
        let auth = password_dir(&dir, &format!("auth-{name}"), &[("user", "pass")]);
        let broker = Container::start(
            &network,
            &format!("broker-{name}"),
            "snigate-broker:dev",
            &[],
            &[
                "-v",
                &format!("{}:/etc/snigate/tls:ro", tls.display()),
                "-v",
                &format!("{}:/etc/snigate/auth:ro", auth.display()),
            ],
        );
        brokers.push((host, broker));
    }
    // One route at first; the second is added while the router runs.
    let routes = dir.path("routes.d");
    std::fs::create_dir_all(&routes).unwrap();
    let route = |(host, broker): &(&str, Container)| {
        format!(
            "[[route]]\nname = \"{host}\"\nhosts = [\"{host}\"]\nendpoints = [\"{}:8883\"]\n\n",
            broker.name
        )
    };
    std::fs::write(routes.join("brokers.toml"), route(&brokers[0])).unwrap();
    let router = Container::start(
        &network,
        "router",
        "snigate-router:dev",
        &[8443, 9090],
        &[
            "-v",
            &format!("{}:/etc/snigate/routes.d:ro", routes.display()),
            // Shorter than the image's 20 s, to keep the test short.
            "-e",
            &format!("SNIGATE_ROUTER_DRAIN_TIMEOUT={}s", DRAIN.as_secs()),
        ],
    );
    let port = router.port(8443);
    let hosts = dir.path("hosts");
    std::fs::write(&hosts, "127.0.0.1 localhost broker-a.test broker-b.test\n").unwrap();

    let ca = ca_file.to_str().unwrap();
    let login_a = [
        "--cafile",
        ca,
        "-h",
        "broker-a.test",
        "-p",
        &port,
        "-u",
        "user",
        "-P",
        "pass",
    ];
    let stays = Client::spawn(
        with_hosts_file(&hosts, &sub)
            .unwrap()
            .args(login_a)
            .args(["-t", "later", "-C", "1", "-W", "30", "-i", "stays"])
            .stdout(Stdio::piped()),
    );
    brokers[0].1.wait_for_log("client_id=\"stays\"");
    // The routes directory changes, as a ConfigMap does: picked up by the
    // running router, without a restart.
    std::fs::write(routes.join("brokers.toml"), route(&brokers[0]) + &route(&brokers[1])).unwrap();
    router.wait_for_log("reloaded");
    for (host, _) in &brokers {
        let login = ["--cafile", ca, "-h", host, "-p", &port, "-u", "user", "-P", "pass"];
        let message = format!("kept on {host}");
        let out = with_hosts(
            &hosts,
            &pub_,
            &[&login[..], &["-t", "sni", "-r", "-q", "1", "-m", &message]].concat(),
        );
        assert!(out.status.success(), "{out:?}");
        let out = with_hosts(
            &hosts,
            &sub,
            &[&login[..], &["-t", "sni", "-C", "1", "-W", "5"]].concat(),
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout), format!("{message}\n"), "{out:?}");
    }

    // The connection made before the change is still there.
    let out = with_hosts(
        &hosts,
        &pub_,
        &[&login_a[..], &["-t", "later", "-m", "still connected"]].concat(),
    );
    assert!(out.status.success(), "{out:?}");
    let got = stays.output();
    assert_eq!(String::from_utf8_lossy(&got.stdout), "still connected\n");

    // SIGTERM with a client connected: the router stops accepting, keeps the
    // client's connection for the drain timeout, then closes it and exits 0,
    // before docker's 30 s would kill it.
    let mut draining = Client::spawn(
        with_hosts_file(&hosts, &sub)
            .unwrap()
            .args(login_a)
            .args(["-t", "never", "-W", "60", "-i", "draining"])
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    brokers[0].1.wait_for_log("client_id=\"draining\"");
    let started = Instant::now();
    let name = router.name.clone();
    let stop = std::thread::spawn(move || docker_ok(&["stop", "-t", "30", &name]));
    let line = router.wait_for_log("stopped accepting; draining");
    assert!(!line.contains("open=0"), "{line}");
    std::thread::sleep(DRAIN / 2);
    assert!(draining.running(), "the connection was kept while draining");
    stop.join().unwrap();
    let stopped = started.elapsed();
    assert!(
        stopped >= DRAIN && stopped < Duration::from_secs(25),
        "stopped in {stopped:?}, drain timeout {DRAIN:?}"
    );
    let code = docker_ok(&["inspect", "--format", "{{.State.ExitCode}}", &router.name]);
    assert_eq!(code, "0", "{}", router.logs());
    let drained = router.wait_for_log("drained");
    assert!(
        !drained.contains("aborted=0"),
        "the client was cut at the deadline: {drained}"
    );
    drop(draining);
    let (_, broker) = &brokers[0];
    docker_ok(&["stop", "-t", "30", &broker.name]);
    let code = docker_ok(&["inspect", "--format", "{{.State.ExitCode}}", &broker.name]);
    assert_eq!(code, "0", "{}", broker.logs());
}

#[test]
fn the_manifests_validate_offline() {
    let python = PathBuf::from(format!("{ROOT}/target/tools/venv/bin/python"));
    let ready = python.exists()
        && Command::new(&python)
            .args(["-c", "import kubernetes_validate, jsonschema, yaml"])
            .status()
            .is_ok_and(|s| s.success());
    if !ready {
        assert!(
            std::env::var("CI").map_or(true, |v| v.is_empty()),
            "CI=true: target/tools/venv lacks kubernetes-validate, jsonschema or PyYAML (scripts/test installs them)"
        );
        eprintln!("SKIPPED: the manifests need target/tools/venv with kubernetes-validate (run scripts/test once)");
        return;
    }
    let out = Command::new(format!("{ROOT}/deploy/check-manifests"))
        .env("PYTHON", &python)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// deploy/kubernetes/ingress (the router as the cluster's ingress, with
/// PROXY protocol in and the brokers' headless Service) renders with
/// kustomize, validates like the other manifests, and the router
/// configuration it mounts is one the router accepts.
#[test]
fn the_ingress_overlay_renders_validates_and_configures_the_router() {
    let Some(kubectl) = tool("kubectl", "kubectl") else {
        return;
    };
    let python = PathBuf::from(format!("{ROOT}/target/tools/venv/bin/python"));
    if !python.exists() {
        assert!(
            std::env::var("CI").map_or(true, |v| v.is_empty()),
            "CI=true: target/tools/venv is missing (scripts/test installs it)"
        );
        eprintln!("SKIPPED: the overlay's check needs target/tools/venv (run scripts/test once)");
        return;
    }
    let rendered = run(&kubectl, &["kustomize", &format!("{ROOT}/deploy/kubernetes/ingress")]);
    assert!(
        rendered.status.success(),
        "{}",
        String::from_utf8_lossy(&rendered.stderr)
    );
    let dir = TempDir::new();
    std::fs::write(dir.path("ingress.yaml"), &rendered.stdout).unwrap();
    let checked = Command::new(format!("{ROOT}/deploy/check-manifests"))
        .env("PYTHON", &python)
        .arg(dir.path("ingress.yaml"))
        .output()
        .unwrap();
    assert!(
        checked.status.success(),
        "{}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
    // The ConfigMaps as the pod would see them: router.toml, routes.d/*.toml.
    let extract = "import sys, yaml, os\n\
                   out = sys.argv[2]\n\
                   os.makedirs(os.path.join(out, 'routes.d'))\n\
                   for doc in yaml.safe_load_all(open(sys.argv[1])):\n\
                   \x20   if doc and doc['kind'] == 'ConfigMap':\n\
                   \x20       sub = '' if doc['metadata']['name'] == 'snigate-router-config' else 'routes.d'\n\
                   \x20       for key, text in doc['data'].items():\n\
                   \x20           open(os.path.join(out, sub, key), 'w').write(text)\n";
    let out = dir.path("etc");
    let status = Command::new(&python)
        .args(["-c", extract])
        .arg(dir.path("ingress.yaml"))
        .arg(&out)
        .status()
        .unwrap();
    assert!(status.success());
    let config = snigate_router::config::load(Some(&out.join("router.toml")), &Default::default())
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(config.listen[0].proxy.is_some(), "PROXY protocol in");
    let settings = snigate_router::Settings::new(config).unwrap_or_else(|e| panic!("{e}"));
    let table = settings.table.to_string();
    assert!(table.contains("snigate-broker-pods:8883"), "{table}");
    assert!(table.contains("[alpn mqtt x-amzn-mqtt-ca]"), "{table}");
}
