//! Persisted backend state, so the simulated backend outlives the vkubelet process (as a real
//! backend does) and tests can check what it really did.
//!
//! In `stateDir`:
//! - `journal.jsonl`: one JSON record per line, `create` (the pod as the backend runs it) or
//!   `delete` (by UID). Replayed at start to rebuild the pod set, then compacted to the live pods.
//! - `creates.log`: one UID per line for every pod the backend really created. Never compacted: a
//!   UID appearing twice means the backend ran a pod twice.
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
    Create(PodRecord),
    Delete { uid: String },
}

pub struct Journal {
    dir: PathBuf,
    journal: File,
    creates: File,
    faults: File,
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

/// Replays `journal.jsonl` into the pods that were live at its last complete line.
fn replay(path: &Path) -> std::io::Result<Vec<PodRecord>> {
    let mut live: Vec<PodRecord> = Vec::new();
    let f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(live),
        Err(e) => return Err(e),
    };
    for line in BufReader::new(f).lines() {
        let line = line?;
        // A torn last line (killed mid-write, or read while being written) is skipped, not fatal.
        match serde_json::from_str::<Record>(&line) {
            Ok(Record::Create(p)) => {
                live.retain(|q| q.uid != p.uid);
                live.push(p);
            }
            Ok(Record::Delete { uid }) => live.retain(|q| q.uid != uid),
            Err(_) => {}
        }
    }
    Ok(live)
}

/// The pods the backend in `dir` holds now, without touching its files.
pub fn live_pods(dir: &Path) -> std::io::Result<Vec<PodRecord>> {
    replay(&dir.join("journal.jsonl"))
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
    complete_lines(dir, "creates.log")
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
        let live = replay(&path)?;
        // Compact: rewrite only the live pods, atomically.
        let tmp = dir.join("journal.jsonl.tmp");
        {
            let mut f = File::create(&tmp)?;
            for p in &live {
                writeln!(f, "{}", serde_json::to_string(&Record::Create(p.clone()))?)?;
            }
            f.sync_all()?;
        }
        std::fs::rename(&tmp, &path)?;
        let journal = OpenOptions::new().append(true).create(true).open(&path)?;
        let creates = OpenOptions::new()
            .append(true)
            .create(true)
            .open(dir.join("creates.log"))?;
        let faults = OpenOptions::new()
            .append(true)
            .create(true)
            .open(dir.join("faults.log"))?;
        Ok((
            Self {
                dir: dir.to_path_buf(),
                journal,
                creates,
                faults,
            },
            live,
        ))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Record a new pod (and count the real create).
    pub fn created(&mut self, pod: &PodRecord) -> std::io::Result<()> {
        let line = format!("{}\n", serde_json::to_string(&Record::Create(pod.clone()))?);
        self.journal.write_all(line.as_bytes())?;
        self.creates.write_all(format!("{}\n", pod.uid).as_bytes())
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
        // A torn line from a kill mid-write.
        std::fs::OpenOptions::new()
            .append(true)
            .open(dir.join("journal.jsonl"))
            .unwrap()
            .write_all(b"{\"op\":\"cre")
            .unwrap();
        let (_, live) = Journal::open(&dir).unwrap();
        assert_eq!(
            live.iter().map(|p| p.uid.as_str()).collect::<Vec<_>>(),
            vec!["b"]
        );
        let journal = std::fs::read_to_string(dir.join("journal.jsonl")).unwrap();
        assert_eq!(journal.lines().count(), 1, "compacted to live pods");
        let creates = std::fs::read_to_string(dir.join("creates.log")).unwrap();
        assert_eq!(creates, "a\nb\n", "history kept");
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
        std::fs::OpenOptions::new()
            .append(true)
            .open(dir.join("creates.log"))
            .unwrap()
            .write_all(b"half")
            .unwrap();
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
