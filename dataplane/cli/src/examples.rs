//! The EXAMPLES section of each command's help. Every line that starts with `linerate ` is
//! parsed by the tests, so an example that stops matching the options fails the build's tests.

pub const PIPELINE: &str = "Examples:
  # two workers for three seconds, in memory (no root, no interfaces)
  linerate pipeline --workers 2 --duration 3s
  # every flow offered to every worker, so half the packets cross cores
  linerate pipeline --workers 2 --unsteered --json";

pub const FWD: &str = "Examples:
  # two interfaces, each one's frames out of the other
  linerate fwd --port veth0 --port veth1 --logic static --map 0:1,1:0
  # an IPv4 router with TTL decrement; decided flows forwarded in the kernel (max mode)
  linerate fwd --port eth1 --port eth2 --logic router --route 10.1.0.0/16=1,02:00:00:00:00:02 --ttl --max
  # drop DNS, forward the rest, for 30 seconds, with a JSON report at the end
  linerate fwd --port veth0 --port veth1 --filter 'deny udp any any dport 53' --duration 30s --json
  # the settings from a TOML file instead of options
  linerate fwd --config fwd.toml
  # Prometheus metrics on loopback port 9101, inspection socket of its own (linerate show)
  linerate fwd --port veth0 --port veth1 --logic static --map 0:1,1:0 --metrics-listen 9101 --socket /run/linerate/edge.sock";

pub const GEN: &str = "Examples:
  # 1 Mpps of 64-byte frames in 32 flows for 10 seconds
  linerate gen --dev veth0 --src 10.0.0.1 --dst 10.0.1.2 --flows 32 --pps 1M --duration 10s
  # as fast as one core can, from user space
  linerate gen --dev veth0 --src 10.0.0.1 --dst 10.0.1.2 --engine xsk";

pub const SINK: &str = "Examples:
  # rate, loss, reordering and latency of `linerate gen` traffic, for 10 seconds
  linerate sink --dev veth1 --duration 10s
  # count only (no per-frame analysis), as JSON
  linerate sink --dev veth1 --count-only --json";

pub const SELFTEST: &str = "Examples:
  # the whole test: normal and max mode, full and paced load (root)
  linerate selftest
  # one-second trials of normal mode, with a larger ring for fwd
  linerate selftest --trial 1s --only normal --fwd-arg=--ring --fwd-arg=4096";

pub const RELAY: &str = "Examples:
  # a SOCKS5 relay on loopback, splicing in the kernel
  linerate relay --listen 127.0.0.1:1080
  # users from a file, 100 Mbit/s per connection and direction, copying through user space
  linerate relay --listen 0.0.0.0:1080 --mode normal --auth users.txt --rate 100M
  # everything from a TOML file (SIGHUP re-reads users, allow and deny), metrics on :9102
  linerate relay --config relay.toml --metrics-listen 9102
  # JSON log lines for a collector, without the per-connection access lines
  linerate relay --log-format json --log info,linerate_relay::access=off
  # then, from a client
  #   curl --socks5-hostname 127.0.0.1:1080 https://example.org/";

pub const SHOW: &str = "Examples:
  # the routing table of the fwd listening on the default socket
  linerate show routes
  # the flows max mode cached in the kernel, as JSON
  linerate show flows --json
  # counters of a second fwd started with --socket /run/linerate/edge.sock
  linerate show ports --socket /run/linerate/edge.sock
  linerate show steering";

pub const CONTROLLER: &str = "Examples:
  # wss:// with a self-signed pair made in /etc/linerate/tls, one token per node, routes from a file
  linerate controller --tls-self-signed /etc/linerate/tls --node-tokens /etc/linerate/tokens --config routes.toml
  # state and node tokens (table node_tokens) in PostgreSQL: change routes with SQL while nodes run
  linerate controller --tls-cert cert.pem --tls-key key.pem --database postgres://linerate:linerate@127.0.0.1/linerate
  # the plain mode for a test on this host: ws:// and one token for all
  linerate controller --insecure-shared-token --token-file token --config routes.toml
  # a node: its own token, trusting the controller's certificate
  #   linerate fwd ... --controller wss://ctl.example:7878/ --node r1 --token-file r1.token --controller-ca cert.pem";

pub const UP: &str = "Examples:
  # four routers in a line, each with a host, links of 10 Mbit/s and 1 ms
  linerate up --topo linear,4 --link rate=10M,delay=1ms
  # a topology file (docs/TOPOLOGY.md), left running in the background
  linerate up lab.toml --detach
  # check a file without building anything
  linerate up lab.toml --check";

pub const DOWN: &str = "Examples:
  linerate down
  linerate down --name lab";

pub const EXEC: &str = "Examples:
  linerate exec h1 -- ping -c 3 h2
  linerate exec h2 -- iperf3 -s -D";

pub const PING: &str = "Examples:
  linerate ping h1 h4";

pub const PINGALL: &str = "Examples:
  linerate pingall
  # each host pings 3 random peers (large topologies)
  linerate pingall --sample 3";

pub const IPERF: &str = "Examples:
  linerate iperf h1 h4
  linerate iperf h1 h4 -t 10 -P 4 --json";

pub const STATUS: &str = "Examples:
  linerate status
  linerate status --watch
  linerate status --json --name lab";

pub const LINK: &str = "Examples:
  # change a link while traffic runs
  linerate link r1 r2 set delay=20ms loss=1%
  linerate link r1 r2 down
  linerate link r1 r2 up";

pub const FLOW: &str = "Examples:
  # start the [[flows]] of a file in the running emulation
  linerate flow add flows.toml
  linerate flow stop bulk1 bulk2";

pub const BENCH: &str = "Examples:
  # ten trials of the in-memory pipeline, interleaved with an older build's
  linerate bench run pipeline --trials 10 --baseline-exe old/linerate
  # five trials of the relay comparison (root); arguments after -- go to the script
  linerate bench run relay-compare --trials 5 -- --secs 4
  linerate bench compare baseline current
  linerate bench check baseline current --threshold 2%
  linerate bench plot --out target/plots";

pub const COMPLETIONS: &str = "Examples:
  # bash: save where bash-completion looks
  linerate completions bash
  #   linerate completions bash > /etc/bash_completion.d/linerate
  linerate completions zsh";

pub const MAN: &str = "Examples:
  # linerate.1 and linerate-COMMAND.1 for every command, then read one
  linerate man --out target/man
  #   man target/man/linerate-fwd.1";
