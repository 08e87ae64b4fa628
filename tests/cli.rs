//! The real binary: config errors, `check`, `new`, and signal handling.

use std::path::Path;
use std::process::Command;

fn tradehost() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tradehost"))
}

fn run_with_config(toml: &str) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, toml).unwrap();
    let out = tradehost().args(["run", "--config"]).arg(&path).output().unwrap();
    (out.status.code().unwrap(), String::from_utf8_lossy(&out.stderr).to_string())
}

#[test]
fn unknown_config_key_exits_2_naming_the_key() {
    let (code, stderr) = run_with_config("[feed.synthetic]\nsped = 10.0\n");
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("feed.synthetic.sped") && stderr.contains("unknown field"), "{stderr}");
}

#[test]
fn wrong_config_type_exits_2_naming_the_key() {
    let (code, stderr) = run_with_config("[sandbox]\nmax_operations = \"lots\"\n");
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("sandbox.max_operations") && stderr.contains("line 2"), "{stderr}");
}

#[test]
fn missing_strategies_dir_exits_2_naming_the_key() {
    let (code, stderr) = run_with_config("[strategies]\ndir = \"/nonexistent/strategies\"\n");
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("strategies.dir") && stderr.contains("/nonexistent/strategies"), "{stderr}");
}

#[test]
fn check_reports_file_line_col_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.rhai");
    let bad = dir.path().join("bad.rhai");
    std::fs::write(&good, "fn on_candle(c) { print(c.close); }").unwrap();
    std::fs::write(&bad, "fn on_start() {}\nfn on_fill(f) {\n  let = 3;\n}\n").unwrap();
    let out = tradehost().arg("check").arg(&good).output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let out = tradehost().arg("check").arg(&good).arg(&bad).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&format!("{}:3:", bad.display())), "{stderr}");
}

#[test]
fn shipped_strategies_and_examples_pass_check() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    for dir in ["strategies", "examples/strategies"] {
        for entry in std::fs::read_dir(root.join(dir)).unwrap() {
            files.push(entry.unwrap().path());
        }
    }
    assert!(files.len() >= 6);
    let out = tradehost().arg("check").args(&files).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn new_writes_a_template_that_passes_check() {
    let dir = tempfile::tempdir().unwrap();
    let out = tradehost().args(["new", "my_strategy", "--strategies"]).arg(dir.path()).output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let file = dir.path().join("my_strategy.rhai");
    assert!(std::fs::read_to_string(&file).unwrap().starts_with("// my_strategy:"));
    assert_eq!(tradehost().arg("check").arg(&file).output().unwrap().status.code(), Some(0));
    let again = tradehost().args(["new", "my_strategy", "--strategies"]).arg(dir.path()).output().unwrap();
    assert_eq!(again.status.code(), Some(1), "an existing file is never overwritten");
    let bad = tradehost().args(["new", "../evil", "--strategies"]).arg(dir.path()).output().unwrap();
    assert_eq!(bad.status.code(), Some(2));
}

#[cfg(unix)]
mod signals {
    use super::*;
    use std::io::{BufRead, BufReader};
    use std::process::{Child, Stdio};
    use std::sync::mpsc;
    use std::time::{Duration, Instant};

    /// The binary running on a temp folder, with its output lines on a channel.
    struct Host {
        child: Child,
        lines: mpsc::Receiver<String>,
        seen: Vec<String>,
        config: std::path::PathBuf,
        _dir: tempfile::TempDir,
    }

    impl Host {
        fn start(strategy: &str, sandbox: &str) -> Host {
            Host::start_with(strategy, sandbox, &[], &[])
        }

        /// Starts with extra `run` arguments and environment variables.
        fn start_with(strategy: &str, sandbox: &str, args: &[&str], envs: &[(&str, &std::ffi::OsStr)]) -> Host {
            let dir = tempfile::tempdir().unwrap();
            let strategies = dir.path().join("strategies");
            std::fs::create_dir(&strategies).unwrap();
            std::fs::write(strategies.join("slow.rhai"), strategy).unwrap();
            let config = dir.path().join("config.toml");
            std::fs::write(
                &config,
                format!(
                    "data_dir = {:?}\n[strategies]\ndir = {:?}\n[sandbox]\n{sandbox}\n[shutdown]\non_stop_timeout_ms = 10000\n[feed.synthetic]\nhistory_bars = 5\n[http]\nbind = \"127.0.0.1:0\"\n",
                    dir.path().join("data"),
                    strategies
                ),
            )
            .unwrap();
            Host::spawn(config, dir, args, envs)
        }

        /// Runs the binary again on an existing folder and config.
        fn restart(config: std::path::PathBuf, dir: tempfile::TempDir) -> Host {
            Host::spawn(config, dir, &[], &[])
        }

        fn spawn(
            config: std::path::PathBuf,
            dir: tempfile::TempDir,
            args: &[&str],
            envs: &[(&str, &std::ffi::OsStr)],
        ) -> Host {
            let mut child = tradehost()
                .args(["run", "--config"])
                .arg(&config)
                .args(args)
                .envs(envs.iter().copied())
                .env("RUST_LOG", "info")
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            let (tx, lines) = mpsc::channel();
            for stream in [
                Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
                Box::new(child.stderr.take().unwrap()),
            ] {
                let tx = tx.clone();
                std::thread::spawn(move || {
                    for line in BufReader::new(stream).lines().map_while(Result::ok) {
                        let _ = tx.send(line);
                    }
                });
            }
            Host { child, lines, seen: Vec::new(), config, _dir: dir }
        }

        fn wait_line(&mut self, text: &str) {
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                if let Ok(line) = self.lines.recv_timeout(Duration::from_millis(100)) {
                    let found = line.contains(text);
                    self.seen.push(line);
                    if found {
                        return;
                    }
                }
            }
            panic!("never saw {text:?}; output:\n{}", self.seen.join("\n"));
        }

        fn signal(&self, signal: nix::sys::signal::Signal) {
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), signal).unwrap();
        }

        fn wait_exit(&mut self, within: Duration) -> (i32, Duration) {
            let started = Instant::now();
            loop {
                if let Some(status) = self.child.try_wait().unwrap() {
                    while let Ok(line) = self.lines.recv_timeout(Duration::from_millis(200)) {
                        self.seen.push(line);
                    }
                    return (status.code().unwrap_or(-1), started.elapsed());
                }
                if started.elapsed() > within {
                    let _ = self.child.kill();
                    panic!("did not exit within {within:?}; output:\n{}", self.seen.join("\n"));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    #[test]
    fn sigint_shuts_down_cleanly_even_inside_a_long_callback() {
        let strategy = r#"
    fn config() { #{ symbols: ["BTCUSD"], timeframe: "1s" } }
    fn on_candle(c) { print("entering long callback"); loop { } }
    "#;
        let mut host = Host::start(strategy, "callback_budget_ms = 3000\nmax_operations = 1000000000000");
        host.wait_line("entering long callback");
        host.signal(nix::sys::signal::Signal::SIGINT);
        let (code, elapsed) = host.wait_exit(Duration::from_secs(15));
        assert_eq!(code, 0, "{}", host.seen.join("\n"));
        assert!(host.seen.iter().any(|l| l.contains("shutdown complete")), "{}", host.seen.join("\n"));
        eprintln!("shutdown took {elapsed:?}");
    }

    #[test]
    fn a_second_instance_on_the_same_data_dir_exits_2() {
        let strategy =
            "fn config() { #{ symbols: [\"BTCUSD\"], timeframe: \"1s\" } }\nfn on_candle(c) { print(\"candle\"); }";
        let mut host = Host::start(strategy, "callback_budget_ms = 1000");
        host.wait_line("candle");
        let second = tradehost().args(["run", "--config"]).arg(&host.config).output().unwrap();
        assert_eq!(second.status.code(), Some(2));
        let stderr = String::from_utf8_lossy(&second.stderr);
        assert!(stderr.contains("another tradehost instance holds the data dir"), "{stderr}");
        host.signal(nix::sys::signal::Signal::SIGINT);
        assert_eq!(host.wait_exit(Duration::from_secs(10)).0, 0, "the first instance is unharmed");
    }

    #[test]
    fn a_damaged_store_stops_the_start_with_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        let db = data.join(tradehost::store::DB_FILE);
        std::fs::write(&db, vec![7u8; 8192]).unwrap();
        let out = tradehost().args(["run", "--data-dir"]).arg(&data).output().unwrap();
        assert_eq!(out.status.code(), Some(1));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("is damaged and was left untouched"), "{stderr}");
        assert_eq!(std::fs::read(&db).unwrap(), vec![7u8; 8192]);
        let doctor = tradehost().args(["doctor", "--data-dir"]).arg(&data).output().unwrap();
        assert_eq!(doctor.status.code(), Some(1));
        assert!(String::from_utf8_lossy(&doctor.stdout).contains("FAIL  store"));
    }

    #[test]
    fn tradehost_status_and_stop_talk_to_a_running_host() {
        let strategy =
            "fn config() { #{ symbols: [\"BTCUSD\"], timeframe: \"1s\" } }\nfn on_candle(c) { print(\"candle\"); }";
        let mut host = Host::start(strategy, "callback_budget_ms = 1000");
        host.wait_line("control API and dashboard at http://");
        let addr = host
            .seen
            .iter()
            .find_map(|l| l.split("at http://").nth(1))
            .map(|rest| rest.trim_end_matches('/').split('/').next().unwrap().to_string())
            .unwrap();
        host.wait_line("candle");
        let data_dir = host._dir.path().join("data");
        let status =
            tradehost().args(["status", "--json", "--http", &addr, "--data-dir"]).arg(&data_dir).output().unwrap();
        assert_eq!(status.status.code(), Some(0), "{}", String::from_utf8_lossy(&status.stderr));
        let json: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
        assert_eq!(json["strategies"][0]["name"], "slow");
        assert_eq!(json["health"]["status"], "ready");
        let table = tradehost().args(["status", "--http", &addr, "--data-dir"]).arg(&data_dir).output().unwrap();
        assert!(
            String::from_utf8_lossy(&table.stdout).contains("slow      running"),
            "{}",
            String::from_utf8_lossy(&table.stdout)
        );
        let wrong = tradehost().args(["status", "--http", &addr, "--token", "not-the-right-token"]).output().unwrap();
        assert_eq!(wrong.status.code(), Some(1));
        // doctor on the data folder of a running host says so instead of failing on its lock.
        let doctor = tradehost().args(["doctor", "--config"]).arg(&host.config).output().unwrap();
        let stdout = String::from_utf8_lossy(&doctor.stdout);
        assert!(stdout.contains("the host is running (pid ") && stdout.contains("doctor --live"), "{stdout}");
        assert!(!stdout.contains("FAIL"), "{stdout}");
        assert_eq!(doctor.status.code(), Some(0), "{stdout}");
        let live =
            tradehost().args(["doctor", "--live", "--http", &addr, "--data-dir"]).arg(&data_dir).output().unwrap();
        let stdout = String::from_utf8_lossy(&live.stdout);
        assert_eq!(live.status.code(), Some(0), "{stdout}");
        assert!(stdout.contains("OK    host at http://") && stdout.contains("clock simulated ×60"), "{stdout}");
        assert!(stdout.contains("OK    strategy slow: running"), "{stdout}");
        for section in ["integrations", "synchronization", "real-time", "data consistency"] {
            assert!(stdout.lines().any(|l| l == section), "section {section}: {stdout}");
        }
        let health = tradehost().args(["health", "--http", &addr]).output().unwrap();
        assert_eq!(health.status.code(), Some(0), "{}", String::from_utf8_lossy(&health.stderr));
        assert_eq!(String::from_utf8_lossy(&health.stdout).trim(), "ready");

        let stop = tradehost().args(["stop", "--http", &addr, "--data-dir"]).arg(&data_dir).output().unwrap();
        assert_eq!(stop.status.code(), Some(0), "{}", String::from_utf8_lossy(&stop.stderr));
        assert!(String::from_utf8_lossy(&stop.stdout).contains("shut down and exited"));
        let (code, _) = host.wait_exit(Duration::from_secs(10));
        assert_eq!(code, 0);
        assert!(host.seen.iter().any(|l| l.contains("shutdown complete")));
        let gone = tradehost().args(["health", "--http", &addr]).output().unwrap();
        assert_eq!(gone.status.code(), Some(1));
        assert!(String::from_utf8_lossy(&gone.stderr).contains("no tradehost answers at"));
    }

    #[test]
    fn systemd_hears_ready_then_watchdog_pings_then_stopping() {
        use std::os::unix::net::UnixDatagram;
        let sockets = tempfile::tempdir().unwrap();
        let path = sockets.path().join("notify.sock");
        let listener = UnixDatagram::bind(&path).unwrap();
        listener.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        let strategy = "fn config() { #{ symbols: [\"BTCUSD\"], timeframe: \"1s\" } }\nfn on_candle(c) { }";
        let envs = [("NOTIFY_SOCKET", path.as_os_str()), ("WATCHDOG_USEC", std::ffi::OsStr::new("1000000"))];
        let mut host = Host::start_with(strategy, "callback_budget_ms = 1000", &[], &envs);
        let mut heard: Vec<String> = Vec::new();
        let listen = |heard: &mut Vec<String>, until: &dyn Fn(&[String]) -> bool, what: &str| {
            let deadline = Instant::now() + Duration::from_secs(30);
            let mut buffer = [0u8; 1024];
            while !until(heard) {
                assert!(Instant::now() < deadline, "never heard {what}; heard {heard:?}");
                if let Ok(n) = listener.recv(&mut buffer) {
                    heard.extend(String::from_utf8_lossy(&buffer[..n]).lines().map(str::to_string));
                }
            }
        };
        listen(&mut heard, &|h| h.iter().any(|l| l == "READY=1"), "READY=1");
        let ready_at = heard.iter().position(|l| l == "READY=1").unwrap();
        assert!(!heard[..ready_at].iter().any(|l| l == "STOPPING=1"));
        let pings = |h: &[String]| h[ready_at..].iter().filter(|l| *l == "WATCHDOG=1").count() >= 3;
        listen(&mut heard, &pings, "three WATCHDOG=1 pings");
        host.signal(nix::sys::signal::Signal::SIGTERM);
        listen(&mut heard, &|h| h.iter().any(|l| l == "STOPPING=1"), "STOPPING=1");
        assert_eq!(host.wait_exit(Duration::from_secs(15)).0, 0);
        assert!(heard.iter().any(|l| l.starts_with("STATUS=")), "a status line for systemctl: {heard:?}");
    }

    #[test]
    fn kill_9_mid_write_leaves_the_previous_health_file_whole() {
        let strategy = "fn config() { #{ symbols: [\"BTCUSD\"], timeframe: \"1s\" } }\nfn on_candle(c) { }";
        // Rewritten every 2 ms: a kill at a random moment often lands mid-write.
        let mut host = Host::start(strategy, "callback_budget_ms = 1000\n[health]\ninterval_ms = 2");
        host.wait_line("lifecycle: ready");
        let health = host._dir.path().join("data/health.json");
        for round in 0..8u64 {
            std::thread::sleep(Duration::from_millis(150 + round * 37 % 200));
            host.signal(nix::sys::signal::Signal::SIGKILL);
            let _ = host.child.wait();
            let text = std::fs::read_to_string(&health).unwrap();
            let file: serde_json::Value =
                serde_json::from_str(&text).unwrap_or_else(|e| panic!("round {round}: {e}: {text:?}"));
            assert!(file["components"].is_object(), "round {round}: {file}");
            let config = host.config.clone();
            let dir = std::mem::replace(&mut host._dir, tempfile::tempdir().unwrap());
            host = Host::restart(config, dir);
            host.wait_line("lifecycle: ready");
        }
        host.signal(nix::sys::signal::Signal::SIGTERM);
        assert_eq!(host.wait_exit(Duration::from_secs(15)).0, 0);
        let leftovers: Vec<_> = std::fs::read_dir(host._dir.path().join("data"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "temporary files of killed runs are cleaned up: {leftovers:?}");
    }

    #[test]
    fn json_logs_go_to_stdout_and_a_daily_file() {
        let logs = tempfile::tempdir().unwrap();
        let file = logs.path().join("tradehost.log");
        let strategy = "fn config() { #{ symbols: [\"BTCUSD\"], timeframe: \"1s\" } }\nfn on_candle(c) { }";
        let file_arg = file.to_str().unwrap();
        let mut host = Host::start_with(
            strategy,
            "callback_budget_ms = 1000",
            &["--log-format", "json", "--log-file", file_arg],
            &[],
        );
        host.wait_line("\"message\":\"ready\"");
        let line = host.seen.iter().find(|l| l.contains("control API and dashboard")).unwrap();
        let event: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert_eq!(event["level"], "INFO", "{event}");
        assert!(event["message"].as_str().unwrap().starts_with("control API and dashboard at http://"), "{event}");
        assert!(event["timestamp"].is_string() && event["target"].is_string(), "{event}");
        host.signal(nix::sys::signal::Signal::SIGTERM);
        assert_eq!(host.wait_exit(Duration::from_secs(15)).0, 0);
        let today = chrono::Utc::now().format("%Y-%m-%d").to_string();
        let written = std::fs::read_to_string(logs.path().join(format!("tradehost.log.{today}"))).unwrap();
        let lines: Vec<serde_json::Value> = written.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert!(lines.iter().any(|e| e["message"] == "shutdown complete"), "{written}");
        let bad = tradehost().args(["run", "--log-file", "/proc/no-such-dir/x.log"]).output().unwrap();
        assert_eq!(bad.status.code(), Some(2));
        assert!(String::from_utf8_lossy(&bad.stderr).contains("--log-file /proc/no-such-dir/x.log"));
    }

    #[test]
    fn sigterm_shuts_down_cleanly() {
        let strategy =
            "fn config() { #{ symbols: [\"BTCUSD\"], timeframe: \"1s\" } }\nfn on_candle(c) { print(\"candle\"); }";
        let mut host = Host::start(strategy, "callback_budget_ms = 1000");
        host.wait_line("candle");
        host.signal(nix::sys::signal::Signal::SIGTERM);
        let (code, _) = host.wait_exit(Duration::from_secs(10));
        assert_eq!(code, 0);
        assert!(host.seen.iter().any(|l| l.contains("shutdown complete")));
    }

    #[test]
    fn second_sigint_exits_at_once_with_130() {
        let strategy = r#"
    fn config() { #{ symbols: ["BTCUSD"], timeframe: "1s" } }
    fn on_candle(c) { print("running"); }
    fn on_stop() { print("slow on_stop"); loop { } }
    "#;
        let mut host = Host::start(strategy, "callback_budget_ms = 20000\nmax_operations = 1000000000000000");
        host.wait_line("running");
        host.signal(nix::sys::signal::Signal::SIGINT);
        host.wait_line("slow on_stop");
        host.signal(nix::sys::signal::Signal::SIGINT);
        let (code, elapsed) = host.wait_exit(Duration::from_secs(5));
        assert_eq!(code, 130, "{}", host.seen.join("\n"));
        assert!(elapsed < Duration::from_secs(5));
    }
}

#[test]
fn delta_without_credentials_or_reachable_exchange_exits_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("strategies")).unwrap();
    let base = format!(
        "data_dir = {:?}\n[strategies]\ndir = {:?}\n[http]\nbind = \"127.0.0.1:0\"\n[exchange]\nkind = \"delta\"\n[exchange.delta]\nrest_url = \"http://127.0.0.1:9\"\nrequest_timeout_ms = 500\n",
        dir.path().join("data"),
        dir.path().join("strategies")
    );
    let run = |toml: &str, env: &[(&str, &str)]| {
        let path = dir.path().join("delta.toml");
        std::fs::write(&path, toml).unwrap();
        let mut command = tradehost();
        command
            .args(["run", "--config"])
            .arg(&path)
            .env_remove("TRADEHOST_DELTA_API_KEY")
            .env_remove("TRADEHOST_DELTA_API_SECRET");
        for (k, v) in env {
            command.env(k, v);
        }
        let out = command.output().unwrap();
        (out.status.code().unwrap(), String::from_utf8_lossy(&out.stderr).to_string())
    };
    let (code, stderr) = run(&base, &[]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("exchange.delta.api_key") && stderr.contains("TRADEHOST_DELTA_API_KEY"), "{stderr}");
    let (code, stderr) =
        run(&base, &[("TRADEHOST_DELTA_API_KEY", "k"), ("TRADEHOST_DELTA_API_SECRET", "super-secret-value")]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("GET /v2/settings") && stderr.contains("cannot reach the exchange"), "{stderr}");
    assert!(!stderr.contains("super-secret-value"), "the secret is never printed");
}

#[test]
fn check_finds_unknown_host_functions_wrong_argument_counts_and_unclosed_blocks_without_running() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "unknown.rhai",
            "fn on_candle(c) {\n    // never runs: found by check\n    if c.close < 0.0 { let s = ta::supertrend(c.symbol, 10, 3); }\n}\n",
            "unknown.rhai:3:",
            "there is no function `ta::supertrend`; ta:: has sma, ema",
        ),
        (
            "arity.rhai",
            "fn on_candle(c) {\n  let x = ta::sma(c.symbol);\n}\n",
            "arity.rhai:2:",
            "`ta::sma` is called with 1 argument(s)",
        ),
        (
            "own.rhai",
            "fn helper(a, b) { a + b }\nfn on_candle(c) {\n  helper(1);\n}\n",
            "own.rhai:3:",
            "`helper` is called with 1 argument(s)",
        ),
        (
            "unclosed.rhai",
            "fn on_start() { }\n\nfn on_candle(c) {\n    if c.close > 1.0 {\n        print(\"up\");\n    }\n\nfn on_stop() { }\n",
            "unclosed.rhai:3:17:",
            "this `{` in fn on_candle is never closed",
        ),
    ];
    for (name, source, at, message) in cases {
        let file = dir.path().join(name);
        std::fs::write(&file, source).unwrap();
        let out = tradehost().arg("check").arg(&file).output().unwrap();
        assert_eq!(out.status.code(), Some(1), "{name}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(at) && stderr.contains(message), "{name}: {stderr}");
    }
}

#[test]
fn check_with_a_config_rejects_overrides_of_missing_strategies_and_strategies_the_market_cannot_feed() {
    let dir = tempfile::tempdir().unwrap();
    let strategies = dir.path().join("strategies");
    std::fs::create_dir(&strategies).unwrap();
    let sol = strategies.join("sol.rhai");
    std::fs::write(&sol, "fn config() { #{ symbols: [\"SOLUSD\"] } }\nfn on_candle(c) { }").unwrap();
    let config = dir.path().join("c.toml");
    std::fs::write(
        &config,
        format!("[strategies]\ndir = {strategies:?}\n[strategies.overrides.sma_crosss]\nparams = {{ fast = 5 }}\n"),
    )
    .unwrap();
    let out = tradehost().args(["check", "--config"]).arg(&config).arg(&sol).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("`strategies.overrides.sma_crosss`: there is no strategy sma_crosss"), "{stderr}");
    assert!(stderr.contains("sol.rhai: idle: no market data for SOLUSD"), "{stderr}");
    // Without --config the embedded default market is only a note.
    let out = tradehost().arg("check").arg(&sol).output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("idle: no market data for SOLUSD"));
}

#[test]
fn completions_and_the_man_page_come_from_the_command_definitions() {
    for (shell, marker) in [("bash", "_tradehost()"), ("zsh", "#compdef tradehost"), ("fish", "complete -c tradehost")]
    {
        let out = tradehost().args(["completions", shell]).output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{shell}");
        let script = String::from_utf8_lossy(&out.stdout);
        assert!(
            script.contains(marker) && script.contains("doctor") && script.contains("log-format"),
            "{shell}: {script}"
        );
    }
    let bad = tradehost().args(["completions", "tcsh"]).output().unwrap();
    assert_eq!(bad.status.code(), Some(2));
    let man = tradehost().arg("man").output().unwrap();
    assert_eq!(man.status.code(), Some(0));
    let page = String::from_utf8_lossy(&man.stdout);
    assert!(page.starts_with(".ie") || page.contains(".TH tradehost"), "{page}");
    assert!(page.contains("doctor") && page.contains("completions"), "{page}");
}

#[test]
fn doctor_on_a_missing_data_folder_says_so_and_creates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-data");
    let out = tradehost().args(["doctor", "--data-dir"]).arg(&missing).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("does not exist, nothing to check"), "{stdout}");
    assert!(!missing.exists(), "doctor created {}", missing.display());
}
