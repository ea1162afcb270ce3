//! Persisted backend state, so the simulated backend outlives the vkubelet process (as a real
//! backend does) and tests can check what it really did.
//!
//! In `stateDir`:
//! - `journal.jsonl`: one JSON record per line, `create` (a pod the backend really created, as it
//!   runs it) or `delete` (by UID). Replayed at start to rebuild the pod set, then compacted: a
//!   `history` line with the UID of every create so far, then one `live` line per live pod. So the
//!   journal is both the pod set and the create history ([`creates`]: a UID twice means the backend
//!   ran a pod twice), and a create is one write — a kill -9 cannot leave a pod the backend holds
//!   but never counted as created, nor count a create it does not hold.
//! - `faults.log`: one line per failure the sim injected, `<op> <kind> <uid>` (see [`Fault`]), so
//!   a test can check that each one reached the pod as a reason and an event.
//!
//! The readers ([`live_pods`], [`creates`], [`faults`]) only read, so a test can call them while
//! the vkubelet that owns the directory runs.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// A pod as the backend records it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodRecord {
    pub uid: String,
    pub namespace: String,
    pub name: String,
    pub containers: Vec<(String, String)>,
    pub init_containers: Vec<(String, String)>,
    pub restart_policy: String,
    pub lifetime_ms: Option<u64>,
    pub exit_code: i32,
    pub restart_base: i32,
    /// RFC 3339.
    pub created_at: String,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "camelCase")]
enum Record {
    /// A real create.
    Create(PodRecord),
    Delete {
        uid: String,
    },
    /// Written by compaction: every create before it, oldest first.
    History {
        creates: Vec<String>,
    },
    /// Written by compaction: a pod live when the journal was compacted (not a new create).
    Live(PodRecord),
}

pub struct Journal {
    dir: PathBuf,
    journal: File,
    faults: File,
}

/// What a journal holds: the live pods and every create, oldest first.
#[derive(Default)]
struct Replayed {
    live: Vec<PodRecord>,
    creates: Vec<String>,
}

/// A failure the sim injected into one provider call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    /// `create` or `delete`.
    pub op: String,
    /// Why: `failCreates`, `soldOut`, `failureRate` (creates); `failDeletes`,
    /// `deleteFailureRate` (deletes).
    pub kind: String,
    pub uid: String,
}

/// Replays `journal.jsonl` up to its last complete line.
fn replay(path: &Path) -> std::io::Result<Replayed> {
    let mut out = Replayed::default();
    let f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e),
    };
    let upsert = |live: &mut Vec<PodRecord>, p: PodRecord| {
        live.retain(|q| q.uid != p.uid);
        live.push(p);
    };
    for line in BufReader::new(f).lines() {
        let line = line?;
        // A torn last line (killed mid-write, or read while being written) is skipped, not fatal.
        match serde_json::from_str::<Record>(&line) {
            Ok(Record::Create(p)) => {
                out.creates.push(p.uid.clone());
                upsert(&mut out.live, p);
            }
            Ok(Record::Live(p)) => upsert(&mut out.live, p),
            Ok(Record::Delete { uid }) => out.live.retain(|q| q.uid != uid),
            Ok(Record::History { creates }) => out.creates.extend(creates),
            Err(_) => {}
        }
    }
    Ok(out)
}

/// The pods the backend in `dir` holds now, without touching its files.
pub fn live_pods(dir: &Path) -> std::io::Result<Vec<PodRecord>> {
    Ok(replay(&dir.join("journal.jsonl"))?.live)
}

/// Complete lines of a log in `dir` (a missing file has none; a torn last line is left out).
fn complete_lines(dir: &Path, name: &str) -> std::io::Result<Vec<String>> {
    let text = match std::fs::read_to_string(dir.join(name)) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let complete = text.rfind('\n').map_or("", |end| &text[..end]);
    Ok(complete
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_string)
        .collect())
}

/// Every real create of the backend in `dir`, one UID per create, oldest first.
pub fn creates(dir: &Path) -> std::io::Result<Vec<String>> {
    Ok(replay(&dir.join("journal.jsonl"))?.creates)
}

/// Every failure the sim in `dir` injected, oldest first.
pub fn faults(dir: &Path) -> std::io::Result<Vec<Fault>> {
    Ok(complete_lines(dir, "faults.log")?
        .iter()
        .filter_map(|l| {
            let mut parts = l.split_whitespace();
            Some(Fault {
                op: parts.next()?.to_string(),
                kind: parts.next()?.to_string(),
                uid: parts.next()?.to_string(),
            })
        })
        .collect())
}

impl Journal {
    /// Open `dir`, returning the journal and the pods that were live when it was last written.
    pub fn open(dir: &Path) -> std::io::Result<(Self, Vec<PodRecord>)> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join("journal.jsonl");
        let Replayed { live, creates } = replay(&path)?;
        // Compact: the history and the live pods, atomically (written beside, then renamed over).
        let tmp = dir.join("journal.jsonl.tmp");
        {
            let mut f = File::create(&tmp)?;
            writeln!(
                f,
                "{}",
                serde_json::to_string(&Record::History { creates })?
            )?;
            for p in live.iter().cloned() {
                writeln!(f, "{}", serde_json::to_string(&Record::Live(p))?)?;
            }
            f.sync_all()?;
        }
        std::fs::rename(&tmp, &path)?;
        let journal = OpenOptions::new().append(true).create(true).open(&path)?;
        let faults = OpenOptions::new()
            .append(true)
            .create(true)
            .open(dir.join("faults.log"))?;
        Ok((
            Self {
                dir: dir.to_path_buf(),
                journal,
                faults,
            },
            live,
        ))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Record a real create: the new pod and its place in the history, in one write.
    pub fn created(&mut self, pod: &PodRecord) -> std::io::Result<()> {
        let line = format!("{}\n", serde_json::to_string(&Record::Create(pod.clone()))?);
        self.journal.write_all(line.as_bytes())
    }

    /// Record a failure injected into `op` (`create`/`delete`) of pod `uid`.
    pub fn fault(&mut self, op: &str, kind: &str, uid: &str) -> std::io::Result<()> {
        self.faults
            .write_all(format!("{op} {kind} {uid}\n").as_bytes())
    }

    pub fn deleted(&mut self, uid: &str) -> std::io::Result<()> {
        let line = format!(
            "{}\n",
            serde_json::to_string(&Record::Delete {
                uid: uid.to_string()
            })?
        );
        self.journal.write_all(line.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(uid: &str) -> PodRecord {
        PodRecord {
            uid: uid.into(),
            namespace: "ns".into(),
            name: uid.into(),
            containers: vec![("c".into(), "busybox".into())],
            init_containers: vec![],
            restart_policy: "Always".into(),
            lifetime_ms: None,
            exit_code: 0,
            restart_base: 0,
            created_at: "2026-01-01T00:00:00Z".into(),
        }
    }

    #[test]
    fn replays_compacts_and_keeps_create_history() {
        let dir = std::env::temp_dir().join(format!("sim-journal-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        {
            let (mut j, live) = Journal::open(&dir).unwrap();
            assert!(live.is_empty());
            j.created(&rec("a")).unwrap();
            j.created(&rec("b")).unwrap();
            j.deleted("a").unwrap();
        }
        // A create torn by a kill mid-write: the pod neither lives on nor counts as created.
        std::fs::OpenOptions::new()
            .append(true)
            .open(dir.join("journal.jsonl"))
            .unwrap()
            .write_all(b"{\"op\":\"create\",\"uid\":\"c")
            .unwrap();
        let uids = |live: Vec<PodRecord>| live.into_iter().map(|p| p.uid).collect::<Vec<_>>();
        {
            let (mut j, live) = Journal::open(&dir).unwrap();
            assert_eq!(uids(live), vec!["b"]);
            let journal = std::fs::read_to_string(dir.join("journal.jsonl")).unwrap();
            assert_eq!(
                journal.lines().count(),
                2,
                "compacted to history + live pods"
            );
            assert_eq!(creates(&dir).unwrap(), vec!["a", "b"], "history kept");
            j.created(&rec("d")).unwrap();
        }
        // Compacting again does not count the live pods as new creates.
        let (_, live) = Journal::open(&dir).unwrap();
        assert_eq!(uids(live), vec!["b", "d"]);
        assert_eq!(creates(&dir).unwrap(), vec!["a", "b", "d"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn readers_see_live_pods_creates_and_faults_without_compacting() {
        let dir = std::env::temp_dir().join(format!("sim-readers-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        assert!(live_pods(&dir).unwrap().is_empty(), "no dir, no pods");
        let (mut j, _) = Journal::open(&dir).unwrap();
        j.created(&rec("a")).unwrap();
        j.created(&rec("b")).unwrap();
        j.deleted("a").unwrap();
        j.fault("create", "failureRate", "c").unwrap();
        j.fault("delete", "deleteFailureRate", "b").unwrap();
        // A line being written as the reader looks: not counted yet.
        for log in ["journal.jsonl", "faults.log"] {
            std::fs::OpenOptions::new()
                .append(true)
                .open(dir.join(log))
                .unwrap()
                .write_all(b"half")
                .unwrap();
        }
        let journal_before = std::fs::read_to_string(dir.join("journal.jsonl")).unwrap();
        let live: Vec<String> = live_pods(&dir)
            .unwrap()
            .into_iter()
            .map(|p| p.uid)
            .collect();
        assert_eq!(live, vec!["b"]);
        assert_eq!(creates(&dir).unwrap(), vec!["a", "b"]);
        assert_eq!(
            faults(&dir).unwrap(),
            vec![
                Fault {
                    op: "create".into(),
                    kind: "failureRate".into(),
                    uid: "c".into()
                },
                Fault {
                    op: "delete".into(),
                    kind: "deleteFailureRate".into(),
                    uid: "b".into()
                },
            ]
        );
        assert_eq!(
            std::fs::read_to_string(dir.join("journal.jsonl")).unwrap(),
            journal_before,
            "reading does not compact"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
