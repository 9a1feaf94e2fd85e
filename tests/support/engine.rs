//! The engine's end-to-end tests: pipelines of shell stages in a temp directory, run by the
//! real `rise` on a temp store.
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub struct Env {
    pub dir: tempfile::TempDir,
}

impl Env {
    pub fn new() -> Env {
        Env {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn store(&self) -> PathBuf {
        self.path("store")
    }

    pub fn counter(&self) -> PathBuf {
        self.path("counter.txt")
    }

    pub fn write(&self, rel: &str, text: &str) -> PathBuf {
        let p = self.path(rel);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).expect("mkdir");
        }
        std::fs::write(&p, text).expect("write");
        p
    }

    /// `rise --store STORE ARGS...` with COUNTER pointing at the counter file.
    pub fn rise(&self, args: &[&str]) -> Command {
        let mut cmd = super::rise_at(&self.store());
        cmd.args(args)
            .env("COUNTER", self.counter())
            .current_dir(self.dir.path());
        cmd
    }

    pub fn run(&self, args: &[&str]) -> Output {
        super::output(&mut self.rise(args))
    }

    /// Run and require success.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "rise {args:?} failed ({:?})\nstdout:\n{}\nstderr:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Names appended to the counter file since the last call (and clears it).
    pub fn executed(&self) -> Vec<String> {
        let text = std::fs::read_to_string(self.counter()).unwrap_or_default();
        let _ = std::fs::remove_file(self.counter());
        let mut names: Vec<String> = text.lines().map(str::to_string).collect();
        names.sort();
        names
    }
}

/// A shell stage that records its execution in $COUNTER, then writes `out.txt`: its inputs'
/// `out.txt` contents followed by its own name and params.
pub fn stage(name: &str, inputs: &[(&str, &str)], params: &str) -> String {
    let ins: Vec<String> = inputs
        .iter()
        .map(|(i, s)| format!("{i} = \"{s}\""))
        .collect();
    let cats: String = inputs
        .iter()
        .map(|(i, _)| {
            format!(
                "cat \"$RISE_IN_{}/out.txt\" >> \"$RISE_OUT/out.txt\"; ",
                i.to_uppercase()
            )
        })
        .collect();
    format!(
        "[stage.{name}]\nkind = \"shell\"\ninputs = {{ {} }}\nparams = {{ {params} }}\noutputs = [\"out.txt\"]\n\
         cmd = '''echo \"$RISE_STAGE\" >> \"$COUNTER\"; : > \"$RISE_OUT/out.txt\"; {cats}echo \"{name} $(env | grep ^RISE_PARAM_ | sort | tr '\\n' ' ')\" >> \"$RISE_OUT/out.txt\"'''\n\n",
        ins.join(", ")
    )
}

pub fn header(name: &str) -> String {
    format!("[pipeline]\nname = \"{name}\"\nseed = 1\n\n")
}

/// Every file under `dir`, with its bytes (to prove a store was left unchanged).
pub fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    if !dir.exists() {
        return out;
    }
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).expect("read_dir").flatten() {
            let p = e.path();
            if p.is_dir() {
                todo.push(p);
            } else {
                out.push((p.clone(), std::fs::read(&p).unwrap_or_default()));
            }
        }
    }
    out.sort();
    out
}

/// The key of stage `name` anywhere in `rise plan --json`'s or a job spec's JSON.
pub fn find_key(v: &serde_json::Value, name: &str) -> Option<String> {
    match v {
        serde_json::Value::Object(m) => {
            let named = m
                .get("stage")
                .or_else(|| m.get("name"))
                .and_then(|s| s.as_str());
            if named == Some(name) {
                if let Some(k) = m.get("key").and_then(|k| k.as_str()) {
                    return Some(k.to_string());
                }
            }
            m.values().find_map(|x| find_key(x, name))
        }
        serde_json::Value::Array(a) => a.iter().find_map(|x| find_key(x, name)),
        _ => None,
    }
}

/// Appends `line N` to its scratch file every 0.3 s up to 15, resuming after the lines
/// already there, then copies the file out. `STARTED` appears after line 3; `STARTED.from`
/// gets the line count each start found.
pub fn slow_pipeline(started: &Path) -> String {
    header("slow")
        + &format!(
            r#"[stage.slow]
kind = "shell"
outputs = ["lines"]
cmd = '''
lines="$RISE_SCRATCH/lines"
n=0; if [ -f "$lines" ]; then n=$(wc -l < "$lines"); fi
echo "$n" >> {started}.from
i=$n
while [ "$i" -lt 15 ]; do
  i=$((i+1)); echo "line $i" >> "$lines"
  if [ "$i" = 3 ]; then touch {started}; fi
  sleep 0.3
done
cp "$lines" "$RISE_OUT/lines"
'''
"#,
            started = started.display()
        )
}
