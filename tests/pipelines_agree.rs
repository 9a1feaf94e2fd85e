//! `pipelines/rise-controls.toml` reuses `pipelines/rise.toml`'s cached stages (issue 12): every
//! stage of the default but its report is in the controls file with the same kind, inputs and
//! params, under the same seed, so both compute the same keys and nothing is trained twice. An
//! edit to one file that is not made to the other fails here, before a user pays for it with a
//! retrained teacher.
use std::path::Path;

fn pipeline(name: &str) -> toml::Table {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("pipelines")
        .join(name);
    let text = std::fs::read_to_string(&path).unwrap();
    text.parse()
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn controls_repeat_every_default_stage_unchanged() {
    let default = pipeline("rise.toml");
    let controls = pipeline("rise-controls.toml");
    assert_eq!(
        default["pipeline"]["seed"], controls["pipeline"]["seed"],
        "the seed is in every key"
    );
    let (d, c) = (
        default["stage"].as_table().unwrap(),
        controls["stage"].as_table().unwrap(),
    );
    let mut shared = 0;
    for (name, stage) in d {
        if name == "report" {
            // The controls have their own reports; `rise show report` finds the default's.
            assert!(
                !c.contains_key(name),
                "rise-controls.toml must not redefine `report`"
            );
            continue;
        }
        let Some(theirs) = c.get(name) else {
            panic!("rise-controls.toml lacks the default's stage `{name}`");
        };
        assert_eq!(
            stage, theirs,
            "stage `{name}` differs between the two files"
        );
        shared += 1;
    }
    // Base, teacher and both arms at least: a file of only controls would pass vacuously.
    assert!(shared >= 30, "only {shared} shared stages");
    assert!(
        c.len() > shared,
        "rise-controls.toml holds no control beyond the default's stages"
    );
}
