//! Service traffic from pods of a [`Sandbox`]: HTTP answers, a UDP client that keeps its
//! socket, and a steady stream of new connections — what the kernel proxy tests measure a
//! proxy mode with.

use std::collections::HashSet;
use std::path::Path;

use super::netns::{Pod, Sandbox};

/// A Service on port 80 (targetPort `http`) selecting `selector`, with `extra` spec lines.
pub fn service(name: &str, selector: &str, extra: &str) -> String {
    format!("apiVersion: v1\nkind: Service\nmetadata: {{name: {name}}}\nspec:\n  selector: {{{selector}}}\n  ports: [{{name: http, port: 80, targetPort: http}}]\n{extra}")
}

/// The distinct answers to `n` GETs of `url` from `from`.
pub fn answers(sb: &Sandbox, from: &Pod, url: &str, n: usize) -> HashSet<String> {
    sb.http_get(from, url, n).into_iter().collect()
}

pub fn set(items: &[&str]) -> HashSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// A client pod that sends a datagram every 100 ms from one connected socket and appends each
/// answer (or `!err`) to `log`. When the kernel aborts the socket (ECONNABORTED: the eBPF
/// proxy destroys sockets connected to a removed backend) it logs `!reset` and connects again,
/// as a resolver does.
pub fn udp_client(sb: &mut Sandbox, pod: &Pod, addr: &str, port: u16, log: &Path) {
    let script = format!(
        "import errno, socket, time\ndef dial():\n    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n    s.settimeout(0.3)\n    s.connect(('{addr}', {port}))\n    return s\ns = dial()\nf = open('{}', 'a')\nwhile True:\n    try:\n        s.send(b'q'); f.write(s.recv(512).decode() + '\\n')\n    except OSError as e:\n        if e.errno in (errno.ECONNABORTED, errno.EDESTADDRREQ):\n            f.write('!reset\\n'); s.close(); s = dial()\n        else:\n            f.write('!err\\n')\n    f.flush(); time.sleep(0.1)\n",
        log.display()
    );
    let ns = pod.ns.clone();
    sb.spawn(&ns, &["python3", "-c", &script]);
}

/// The last line a [`udp_client`] logged.
pub fn last_answer(log: &Path) -> String {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .last()
        .unwrap_or_default()
        .to_string()
}

/// New connections to `addr:80` from `pod` for `seconds`, one after another; (ok, failed).
pub fn load(
    sb: &Sandbox,
    pod: &Pod,
    addr: &str,
    seconds: u32,
) -> std::thread::JoinHandle<(u32, u32)> {
    let script = format!(
        "import socket, time\nok = fail = 0\nend = time.time() + {seconds}\nwhile time.time() < end:\n    try:\n        c = socket.create_connection(('{addr}', 80), timeout=2)\n        c.sendall(b'GET / HTTP/1.0\\r\\n\\r\\n')\n        ok += c.recv(64).startswith(b'HTTP/1.0 200')\n        c.close()\n    except OSError:\n        fail += 1\n    time.sleep(0.01)\nprint(ok, fail)\n"
    );
    let mut cmd = sb.command(&pod.ns, &["python3", "-c", &script]);
    std::thread::spawn(move || {
        let out = cmd.output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let mut it = text.split_whitespace().map(|n| n.parse().unwrap());
        (it.next().unwrap(), it.next().unwrap())
    })
}
