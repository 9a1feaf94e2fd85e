//! A worker stage's own error (here: a checkpoint holding only pickled weights) reaches the
//! terminal, not only the stage log.
mod support;

use support::describe;
use support::pipeline::env_with;

#[test]
fn a_worker_stage_error_is_shown_on_the_terminal() {
    let text = "[pipeline]\nname = \"pickled\"\n\n[stage.imported]\nkind = \"model\"\nparams = { hf_dir = \"ckpt\" }\n";
    let env = env_with(text);
    let ckpt = env.dir.path().join("ckpt");
    std::fs::create_dir_all(&ckpt).unwrap();
    std::fs::write(ckpt.join("config.json"), "{}").unwrap();
    std::fs::write(ckpt.join("pytorch_model.bin"), b"\x80\x02").unwrap();
    let out = env.rise(&["run", "PIPELINE", "--plain"]);
    assert!(!out.status.success(), "{}", describe(&out));
    let terminal = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        terminal.contains("pickled weights") && terminal.contains("pytorch_model.bin"),
        "the worker's own error is not on the terminal:\n{terminal}"
    );
}
