//! A throwaway Redis Cluster of `redis-server` processes on free loopback ports: masters and
//! replicas joined by `redis-cli --cluster create`, every slot assigned; slots migrated by
//! hand (`CLUSTER SETSLOT … MIGRATING/IMPORTING` + `MIGRATE`) and masters killed, for the
//! tests of a cluster under change. Needs `support/redis_server.rs` as `redis_server`.
#![allow(clippy::unwrap_used, dead_code)]

use std::process::Command;
use std::time::{Duration, Instant};

use crate::redis_server::RedisServer;

pub struct RedisCluster {
    /// Every node, masters first as `--cluster create` was given them; a killed node stays
    /// in place (its port closed).
    pub nodes: Vec<RedisServer>,
    killed: Vec<bool>,
}

impl RedisCluster {
    /// `masters` masters with `replicas` replicas each; a node unreachable for
    /// `node_timeout_ms` counts as failed (and a replica of a failed master takes over).
    pub fn start(masters: usize, replicas: usize, node_timeout_ms: u32) -> Self {
        let timeout = node_timeout_ms.to_string();
        let nodes: Vec<RedisServer> = (0..masters * (1 + replicas))
            .map(|_| {
                RedisServer::start_with(&[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    &timeout,
                ])
                .unwrap()
            })
            .collect();
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let created = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .output()
            .unwrap();
        assert!(
            created.status.success(),
            "redis-cli --cluster create: {}",
            String::from_utf8_lossy(&created.stdout)
        );
        let killed = vec![false; nodes.len()];
        let cluster = RedisCluster { nodes, killed };
        cluster.wait_healthy(Duration::from_secs(60));
        cluster
    }

    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    fn live(&self) -> impl Iterator<Item = (usize, &RedisServer)> {
        self.nodes
            .iter()
            .enumerate()
            .filter(|(i, _)| !self.killed[*i])
    }

    /// Every live node sees the cluster `ok`, and every live replica is in sync with its
    /// master.
    pub fn wait_healthy(&self, within: Duration) {
        let deadline = Instant::now() + within;
        for (_, node) in self.live() {
            loop {
                let state = node.cli(&["cluster", "info"]);
                let repl = node.cli(&["info", "replication"]);
                let synced = !repl.contains("role:slave") || repl.contains("master_link_status:up");
                if state.contains("cluster_state:ok") && synced {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "cluster not healthy on port {}: {state}{repl}",
                    node.port
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }

    pub fn node_id(&self, node: usize) -> String {
        self.nodes[node].cli(&["cluster", "myid"]).trim().to_owned()
    }

    pub fn keyslot(&self, key: &str) -> u16 {
        let (_, node) = self.live().next().unwrap();
        node.cli(&["cluster", "keyslot", key])
            .trim()
            .parse()
            .unwrap()
    }

    /// The node serving `slot` as its master, as a live node sees it.
    pub fn master_of(&self, slot: u16) -> usize {
        let (_, node) = self.live().next().unwrap();
        // `CLUSTER SHARDS` needs 7.0; `CLUSTER NODES` lines: id addr flags master ... slots.
        let nodes = node.cli(&["cluster", "nodes"]);
        for line in nodes.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 9 || !fields[2].contains("master") || fields[2].contains("fail") {
                continue;
            }
            let owns = fields[8..].iter().any(|range| {
                if range.starts_with('[') {
                    return false;
                }
                let (a, b) = range.split_once('-').unwrap_or((range, range));
                let (a, b): (u16, u16) = (a.parse().unwrap(), b.parse().unwrap());
                (a..=b).contains(&slot)
            });
            if owns {
                let port: u16 = fields[1].split(['@', ':']).nth(1).unwrap().parse().unwrap();
                return self.nodes.iter().position(|n| n.port == port).unwrap();
            }
        }
        panic!("no master serves slot {slot}:\n{nodes}");
    }

    /// The live masters, by index.
    pub fn masters(&self) -> Vec<usize> {
        self.live()
            .filter(|(_, n)| n.cli(&["info", "replication"]).contains("role:master"))
            .map(|(i, _)| i)
            .collect()
    }

    /// Moves `slot` from its master to `to` by hand, as `redis-cli --cluster reshard` does:
    /// `IMPORTING` on the target, `MIGRATING` on the source, its keys `MIGRATE`d one at a
    /// time with `pause` after each (a multi-key call on a slot half migrated is answered
    /// `TRYAGAIN` meanwhile; one on keys already moved, `ASK`), then the slot assigned to
    /// the target on every master. Returns how many keys moved.
    pub fn migrate_slot(&self, slot: u16, to: usize, pause: Duration) -> usize {
        let from = self.master_of(slot);
        assert_ne!(from, to, "slot {slot} is already on node {to}");
        let (from_id, to_id) = (self.node_id(from), self.node_id(to));
        let s = slot.to_string();
        let ok = |reply: String| assert_eq!(reply.trim(), "OK", "{reply}");
        ok(self.nodes[to].cli(&["cluster", "setslot", &s, "importing", &from_id]));
        ok(self.nodes[from].cli(&["cluster", "setslot", &s, "migrating", &to_id]));
        std::thread::sleep(pause);
        let mut moved = 0;
        loop {
            let keys = self.nodes[from].cli(&["cluster", "getkeysinslot", &s, "10"]);
            let keys: Vec<&str> = keys.lines().filter(|k| !k.is_empty()).collect();
            if keys.is_empty() {
                break;
            }
            for key in keys {
                let port = self.nodes[to].port.to_string();
                let reply =
                    self.nodes[from].cli(&["migrate", "127.0.0.1", &port, key, "0", "5000"]);
                // NOKEY: the key expired or was migrated by a redirected write meanwhile.
                assert!(
                    matches!(reply.trim(), "OK" | "NOKEY"),
                    "MIGRATE {key}: {reply}"
                );
                moved += 1;
                std::thread::sleep(pause);
            }
        }
        // The target first, then the source (as redis-cli does), then everyone else.
        ok(self.nodes[to].cli(&["cluster", "setslot", &s, "node", &to_id]));
        ok(self.nodes[from].cli(&["cluster", "setslot", &s, "node", &to_id]));
        for m in self.masters() {
            if m != to && m != from {
                self.nodes[m].cli(&["cluster", "setslot", &s, "node", &to_id]);
            }
        }
        moved
    }

    /// SIGKILL: no goodbye, its port closed.
    pub fn kill(&mut self, node: usize) {
        self.nodes[node].kill();
        self.killed[node] = true;
    }

    /// A count from `INFO errorstats` summed over the live nodes (`TRYAGAIN`, `ASK`, …).
    pub fn errors(&self, name: &str) -> u64 {
        let prefix = format!("errorstat_{name}:count=");
        self.live()
            .map(|(_, n)| {
                n.cli(&["info", "errorstats"])
                    .lines()
                    .find_map(|l| l.trim().strip_prefix(&prefix).map(str::to_owned))
                    .map_or(0, |c| c.parse().unwrap())
            })
            .sum()
    }

    /// `cmdstat_<command>` calls summed over the live nodes.
    pub fn calls(&self, command: &str) -> u64 {
        let prefix = format!("cmdstat_{command}:calls=");
        self.live()
            .map(|(_, n)| {
                n.cli(&["info", "commandstats"])
                    .lines()
                    .find_map(|l| {
                        l.strip_prefix(&prefix)
                            .and_then(|rest| rest.split(',').next())
                            .map(str::to_owned)
                    })
                    .map_or(0, |c| c.parse().unwrap())
            })
            .sum()
    }
}
