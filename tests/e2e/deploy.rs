//! The deployment files: deploy/docker-compose.yml (checked by `docker compose config` or
//! `docker-compose config` when either is installed, and always structurally here: services,
//! ports, and every file it and the Grafana/Prometheus provisioning mount exists in the repo), the
//! Dockerfile, and the Collector examples (their triage-loop configs pass triage-loop's own loader,
//! the Collector configs are wired pipeline by pipeline and to each other).

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_yaml::Value;

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn yaml(rel: &str) -> Value {
    let text = std::fs::read_to_string(repo(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"));
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> &'a str {
    let mut cur = v;
    for k in path {
        cur = &cur[*k];
    }
    cur.as_str()
        .unwrap_or_else(|| panic!("{} is not a string: {cur:?}", path.join(".")))
}

fn strings(v: &Value) -> Vec<String> {
    v.as_sequence()
        .into_iter()
        .flatten()
        .map(|s| s.as_str().expect("a string").to_string())
        .collect()
}

/// The port of `host:port`.
fn port(endpoint: &str) -> &str {
    endpoint.rsplit(':').next().unwrap()
}

/// A config file that triage-loop's own loader accepts, as YAML.
fn triage_config(rel: &str) -> Value {
    if let Err(e) = triage_loop::config::load_file(&repo(rel)) {
        panic!("{e}");
    }
    yaml(rel)
}

/// `docker compose` (the plugin) or `docker-compose` (Debian's package), whichever runs.
fn compose_command() -> Option<Vec<&'static str>> {
    let runs = |args: &[&str]| {
        Command::new(args[0])
            .args(&args[1..])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if runs(&["docker", "compose", "version"]) {
        Some(vec!["docker", "compose"])
    } else if runs(&["docker-compose", "version"]) {
        Some(vec!["docker-compose"])
    } else {
        None
    }
}

#[test]
fn docker_compose_accepts_the_compose_file() {
    let Some(cmd) = compose_command() else {
        assert!(
            std::env::var_os("TRIAGE_REQUIRE_COMPOSE").is_none(),
            "TRIAGE_REQUIRE_COMPOSE is set but neither `docker compose` nor `docker-compose` runs"
        );
        println!("SKIPPED: neither `docker compose` nor `docker-compose` is installed (Debian: apt-get install docker-compose); the structural checks still ran");
        return;
    };
    // `config -q` validates against the Compose schema and resolves the file; it needs no daemon.
    let out = Command::new(cmd[0])
        .args(&cmd[1..])
        .args(["-f", "docker-compose.yml", "config", "-q"])
        .current_dir(repo("deploy"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} config: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_compose_file_wires_the_four_services_and_mounts_files_that_exist() {
    let compose = yaml("deploy/docker-compose.yml");
    let services = compose["services"].as_mapping().expect("services");
    let names: Vec<&str> = services.keys().map(|k| k.as_str().unwrap()).collect();
    assert_eq!(names, ["triage-loop", "jaeger", "prometheus", "grafana"]);
    let deploy = repo("deploy");
    let declared_volumes = compose["volumes"].as_mapping().expect("named volumes");
    // Container path → host file, for the cross-checks below.
    let mut mounts = std::collections::BTreeMap::new();
    for (name, s) in services {
        let name = name.as_str().unwrap();
        assert!(
            s["image"].is_string() || s["build"].is_mapping(),
            "{name}: image or build"
        );
        if let Some(build) = s["build"].as_mapping() {
            let context = deploy.join(build[&Value::from("context")].as_str().unwrap());
            let dockerfile = build[&Value::from("dockerfile")].as_str().unwrap();
            assert!(context.join(dockerfile).is_file(), "{name}: {dockerfile}");
        }
        if let Some(image) = s["image"].as_str() {
            assert!(
                s["build"].is_mapping() || image.rsplit_once(':').is_some(),
                "{name}: pin the image's tag ({image})"
            );
        }
        for p in strings(&s["ports"]) {
            let (host, container) = p.split_once(':').expect("host:container");
            assert!(
                host.parse::<u16>().is_ok() && container.parse::<u16>().is_ok(),
                "{p}"
            );
        }
        for v in strings(&s["volumes"]) {
            let mut parts = v.split(':');
            let (src, dst) = (parts.next().unwrap(), parts.next().expect("source:target"));
            if src.starts_with("./") || src.starts_with("../") {
                let host = deploy.join(src);
                assert!(host.exists(), "{name} mounts {src}, missing in the repo");
                mounts.insert(dst.to_string(), host);
            } else {
                assert!(
                    declared_volumes.contains_key(src),
                    "{name}: volume {src} is not declared"
                );
            }
        }
    }

    // triage-loop: its config is the one mounted, it loads, listens on every interface and
    // exports to Jaeger's OTLP receiver; the ports published are the ones it listens on.
    let tl = &compose["services"]["triage-loop"];
    let command = strings(&tl["command"]);
    let config_path = command.last().unwrap();
    let config_file = mounts.get(config_path).expect("the config is mounted");
    assert!(config_file.ends_with("deploy/triage-loop.yaml"));
    let config = triage_config("deploy/triage-loop.yaml");
    let grpc = str_at(
        &config,
        &["receivers", "otlp", "protocols", "grpc", "endpoint"],
    );
    let http = str_at(
        &config,
        &["receivers", "otlp", "protocols", "http", "endpoint"],
    );
    let admin = str_at(&config, &["extensions", "triage_admin", "endpoint"]);
    for endpoint in [grpc, http, admin] {
        assert!(endpoint.starts_with("0.0.0.0:"), "{endpoint}");
        assert!(
            strings(&tl["ports"])
                .iter()
                .any(|p| p.ends_with(&format!(":{}", port(endpoint)))),
            "{endpoint} is published"
        );
    }
    assert_eq!(
        str_at(&config, &["exporters", "otlp", "endpoint"]),
        "jaeger:4317"
    );
    assert_eq!(
        str_at(
            &compose,
            &[
                "services",
                "jaeger",
                "environment",
                "COLLECTOR_OTLP_ENABLED"
            ]
        ),
        "true"
    );

    // Prometheus: its config is mounted where --config.file says, scrapes triage-loop's admin
    // port, and each rule file sits beside it.
    let pconf_path = strings(&compose["services"]["prometheus"]["command"])
        .iter()
        .find_map(|a| a.strip_prefix("--config.file=").map(str::to_string))
        .expect("--config.file");
    assert!(mounts[&pconf_path].ends_with("deploy/prometheus/prometheus.yml"));
    let pconf = yaml("deploy/prometheus/prometheus.yml");
    let targets = strings(&pconf["scrape_configs"][0]["static_configs"][0]["targets"]);
    assert_eq!(targets, [format!("triage-loop:{}", port(admin))]);
    let dir = Path::new(&pconf_path).parent().unwrap();
    let rules = strings(&pconf["rule_files"]);
    assert_eq!(rules, ["alerts.yml"]);
    for r in rules {
        let target = dir.join(r).display().to_string();
        let host = mounts
            .get(&target)
            .expect("rule file mounted beside the config");
        assert!(host.ends_with("deploy/prometheus/alerts.yml"));
    }

    // Grafana: the data source points at the prometheus service; the dashboard provider's
    // path is where the dashboard is mounted.
    let ds = yaml("deploy/grafana/provisioning/datasources/prometheus.yml");
    assert_eq!(str_at(&ds["datasources"][0], &["type"]), "prometheus");
    assert_eq!(
        str_at(&ds["datasources"][0], &["url"]),
        "http://prometheus:9090"
    );
    let provider = yaml("deploy/grafana/provisioning/dashboards/triage-loop.yml");
    let path = str_at(&provider["providers"][0], &["options", "path"]);
    let dashboard = mounts
        .iter()
        .find(|(dst, _)| Path::new(dst).parent() == Some(Path::new(path)))
        .expect("a dashboard is mounted in the provider's path");
    assert!(dashboard.1.ends_with("deploy/grafana/triage-loop.json"));
    for provisioning in ["datasources", "dashboards"] {
        let dst = format!("/etc/grafana/provisioning/{provisioning}");
        assert!(mounts[&dst].ends_with(format!("deploy/grafana/provisioning/{provisioning}")));
    }
}

#[test]
fn the_dockerfile_builds_in_two_stages_and_runs_as_non_root() {
    let text = std::fs::read_to_string(repo("Dockerfile")).unwrap();
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .collect();
    let froms: Vec<usize> = (0..lines.len())
        .filter(|&i| lines[i].starts_with("FROM "))
        .collect();
    assert!(froms.len() >= 2, "multi-stage");
    assert!(text.contains("cargo build --release --locked"));
    let last = &lines[*froms.last().unwrap()..];
    let user = last
        .iter()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("the final stage sets USER");
    assert!(!["root", "0", "0:0"].contains(&user), "USER {user}");
    let copies: Vec<&&str> = last.iter().filter(|l| l.starts_with("COPY ")).collect();
    assert!(
        copies.iter().all(|l| l.contains("--from=builder")),
        "{copies:?}"
    );
    let expose = last
        .iter()
        .find_map(|l| l.strip_prefix("EXPOSE "))
        .expect("EXPOSE");
    assert_eq!(
        expose.split_whitespace().collect::<Vec<_>>(),
        ["4317", "4318", "9464"]
    );
    // The image's config is the repo's with its listeners moved to 0.0.0.0: the lines its sed
    // rewrites are there.
    let config = std::fs::read_to_string(repo("collector-config.yaml")).unwrap();
    for p in ["4317", "4318", "9464"] {
        assert!(config.contains(&format!("endpoint: 127.0.0.1:{p}")), "{p}");
        assert!(text.contains(&format!("endpoint: 0.0.0.0:{p}/")), "{p}");
    }
    let ignore = std::fs::read_to_string(repo(".dockerignore")).unwrap();
    assert!(ignore.lines().any(|l| l == "target/"));
}

/// Checks every pipeline of a Collector config names components that are defined.
fn assert_pipelines_wired(rel: &str, c: &Value) {
    let pipelines = c["service"]["pipelines"].as_mapping().expect("pipelines");
    assert!(!pipelines.is_empty(), "{rel}");
    for (name, p) in pipelines {
        for kind in ["receivers", "processors", "exporters"] {
            for component in strings(&p[kind]) {
                assert!(
                    c[kind].get(component.as_str()).is_some(),
                    "{rel}: pipeline {name:?} names undefined {kind} {component}"
                );
            }
        }
        assert!(!strings(&p["receivers"]).is_empty(), "{rel}: {name:?}");
        assert!(!strings(&p["exporters"]).is_empty(), "{rel}: {name:?}");
    }
}

#[test]
fn collector_in_front_sends_to_triage_loop_which_sends_back() {
    let rel = "examples/collector/otelcol-in-front.yaml";
    let c = yaml(rel);
    assert_pipelines_wired(rel, &c);
    let triage = triage_config("examples/collector/triage-loop-behind-collector.yaml");
    let listen = str_at(
        &triage,
        &["receivers", "otlp", "protocols", "grpc", "endpoint"],
    );
    // Agents' traces go to triage-loop's gRPC port...
    let into = strings(&c["service"]["pipelines"]["traces/in"]["exporters"]);
    assert_eq!(into, ["otlp/triage_loop"]);
    let to_triage = str_at(&c, &["exporters", "otlp/triage_loop", "endpoint"]);
    assert_eq!(to_triage, format!("triage-loop:{}", port(listen)));
    // ...and triage-loop exports to the receiver whose pipeline goes on to the backend.
    let onward = str_at(&triage, &["exporters", "otlp", "endpoint"]);
    let out = &c["service"]["pipelines"]["traces/out"];
    let receiver = &strings(&out["receivers"])[0];
    let back = str_at(
        &c["receivers"][receiver.as_str()],
        &["protocols", "grpc", "endpoint"],
    );
    assert_eq!(port(onward), port(back));
    assert_ne!(port(back), "4317", "a receiver apart from the agents'");
    assert_eq!(strings(&out["exporters"]), ["otlp/jaeger"]);
}

#[test]
fn load_balancing_routes_by_trace_id_to_instances_sharing_postgres() {
    let rel = "examples/collector/otelcol-loadbalancing.yaml";
    let c = yaml(rel);
    assert_pipelines_wired(rel, &c);
    let lb = &c["exporters"]["loadbalancing"];
    assert_eq!(str_at(lb, &["routing_key"]), "traceID");
    assert!(lb["protocol"]["otlp"].is_mapping());
    let hosts = strings(&lb["resolver"]["static"]["hostnames"]);
    assert!(hosts.len() >= 2, "several instances");
    for pipeline in ["traces", "logs"] {
        assert_eq!(
            strings(&c["service"]["pipelines"][pipeline]["exporters"]),
            ["loadbalancing"],
            "{pipeline}"
        );
    }
    let instance = triage_config("examples/collector/triage-loop-shared-store.yaml");
    let listen = str_at(
        &instance,
        &["receivers", "otlp", "protocols", "grpc", "endpoint"],
    );
    assert!(hosts.iter().all(|h| port(h) == port(listen)), "{hosts:?}");
    let storage = str_at(&instance, &["processors", "failure_triage", "storage"]);
    assert!(storage.starts_with("postgres://"), "{storage}");
}

#[test]
fn each_default_class_has_a_page_with_its_path_and_owner() {
    let taxonomy = triage_loop::classify::taxonomy::Taxonomy::preset("default").unwrap();
    let index = std::fs::read_to_string(repo("docs/classes/README.md")).unwrap();
    for class in &taxonomy.classes {
        let rel = format!("docs/classes/{}.md", class.name);
        let page = std::fs::read_to_string(repo(&rel)).unwrap_or_else(|e| panic!("{rel}: {e}"));
        assert!(page.starts_with(&format!("# `{}`", class.name)), "{rel}");
        for needle in [&class.remediation, &class.owner] {
            assert!(
                page.contains(&format!("`{needle}`")),
                "{rel} names {needle}"
            );
        }
        for section in [
            "## What \"shipped\" means",
            "## How to verify",
            "## Typical signals",
        ] {
            assert!(page.contains(section), "{rel}: {section}");
        }
        assert!(
            index.contains(&format!("({}.md)", class.name)),
            "index links {rel}"
        );
    }
}

#[test]
fn the_cd_example_reports_deployments_with_retries() {
    let workflow = yaml("docs/examples/github-actions-deploy.yml");
    let steps = workflow["jobs"]["deploy"]["steps"].as_sequence().unwrap();
    let report = steps
        .iter()
        .filter_map(|s| s["run"].as_str())
        .find(|r| r.contains("/api/v1/deployments"))
        .expect("a step posts to /api/v1/deployments");
    assert!(report.contains("--retry"), "{report}");
    assert!(steps
        .iter()
        .filter_map(|s| s["run"].as_str())
        .any(|r| r.contains("Triage-Fixes")));
}

#[test]
fn links_in_the_deployment_docs_resolve() {
    let docs = [
        "README.md",
        "docs/cd.md",
        "docs/classes/README.md",
        "docs/classes/tone_brand.md",
        "docs/classes/logic_tool.md",
        "docs/classes/data_quality.md",
        "docs/classes/coverage_gap.md",
    ];
    for rel in docs {
        let text = std::fs::read_to_string(repo(rel)).unwrap();
        let dir = repo(rel).parent().unwrap().to_path_buf();
        for (i, _) in text.match_indices("](") {
            let rest = &text[i + 2..];
            let Some(end) = rest.find(')') else { continue };
            let target = rest[..end].split('#').next().unwrap();
            if target.is_empty() || target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            // The design document lives beside the repository, not in it.
            if target.starts_with("../shared/") {
                continue;
            }
            assert!(dir.join(target).exists(), "{rel}: broken link {target}");
        }
    }
}
