//! Property tests of `qsfs.toml` parsing: arbitrary and mutated configs never panic, every error is one line that
//! names the file (and the line or key at fault), and a store password in the config never shows in an error,
//! whatever else is broken around it.

use std::path::Path;

use proptest::prelude::*;
use qsfs::QsfsError;
use qsfs::config::VolumeConfig;

const PATH: &str = "/vol/qsfs.toml";

/// A valid config whose store 0 is a redis store with `password` inline (as configs written before
/// `password-file` hold them).
fn config_text(password: &str, passphrase: bool) -> String {
    let key = if passphrase {
        "[key]\nsource = \"passphrase\"\ncheck = \"00\"\npassphrase_env = \"P\"\n\n[key.argon2]\nsalt = \"000102030405060708090a0b0c0d0e0f\"\nm_cost_kib = 65536\nt_cost = 3\np_cost = 1\n"
    } else {
        "[key]\nsource = \"file\"\ncheck = \"00\"\n"
    };
    let mut text = format!(
        "format_version = 1\nvolume_id = \"000102030405060708090a0b0c0d0e0f\"\ndata_shards = 4\nparity_shards = 2\n\
         segment_size = \"4MiB\"\nzstd_level = 1\nwrite_quorum = 5\n\n{key}\n[audit]\ninterval = \"6h\"\n\
         bandwidth = \"16MiB\"\ndelta = 0.01\nconfidence = 0.99\nlost_store_grace = \"15m\"\n"
    );
    text.push_str(&format!(
        "\n[[stores]]\nid = 0\nuri = \"redis://:{password}@127.0.0.1:6379/0\"\n"
    ));
    for i in 1..6 {
        text.push_str(&format!(
            "\n[[stores]]\nid = {i}\nuri = \"dir:/srv/s{i}\"\n"
        ));
    }
    text
}

fn mutate(s: &str, edits: &[(usize, u8, char)]) -> String {
    let mut chars: Vec<char> = s.chars().collect();
    for &(pos, op, c) in edits {
        let i = pos % (chars.len() + 1);
        match op % 4 {
            0 => chars.insert(i, c),
            1 if i < chars.len() => {
                chars.remove(i);
            }
            2 if i < chars.len() => chars[i] = c,
            // Drop the rest of the line: a truncated value or table header.
            _ => {
                let end = chars[i..]
                    .iter()
                    .position(|&c| c == '\n')
                    .map_or(chars.len(), |n| i + n);
                chars.drain(i..end);
            }
        }
    }
    chars.into_iter().collect()
}

/// Parses `text`, checking the contract for errors: one line, naming the file.
fn check(text: &str) -> Result<VolumeConfig, String> {
    match VolumeConfig::parse(Path::new(PATH), text) {
        Ok(cfg) => Ok(cfg),
        Err(e) => {
            let line = e.to_string();
            assert!(matches!(e, QsfsError::Config { .. }), "{line}");
            assert!(
                line.starts_with(PATH),
                "error does not name the file: {line}"
            );
            assert!(!line.contains('\n'), "multi-line error: {line:?}");
            assert!(line.len() > PATH.len() + 4, "error says nothing: {line}");
            Err(line)
        }
    }
}

fn interesting_char() -> impl Strategy<Value = char> {
    prop_oneof![
        Just('"'),
        Just('='),
        Just('['),
        Just(']'),
        Just('\n'),
        Just('#'),
        Just('9'),
        Just('\''),
        Just('.'),
        any::<char>(),
    ]
}

fn cases() -> u32 {
    std::env::var("QSFS_PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1000)
}

#[test]
fn the_unmutated_config_is_valid() {
    check(&config_text("Pw7secret", false)).unwrap();
    check(&config_text("Pw7secret", true)).unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn arbitrary_text_never_panics(text in any::<String>()) {
        let _ = check(&text);
    }

    #[test]
    fn arbitrary_toml_shaped_text_never_panics(text in "([a-z_.]{1,12} = (\"[^\"\n]{0,8}\"|[0-9]{1,22}|-?[0-9.e]{1,8}|true)\n|\\[[a-z.]{1,8}\\]\n){0,12}") {
        let _ = check(&text);
    }

    /// Mutations of a valid config, with a password of awkward characters in a store URI: never a panic, and the
    /// password never in the error — a syntax error on the password's own line included.
    #[test]
    fn mutated_configs_never_panic_or_show_a_password(
        password in "[a-zA-Z0-9/?#:&=%+ !$^*()~-]{4,16}",
        passphrase in any::<bool>(),
        edits in prop::collection::vec((any::<usize>(), any::<u8>(), interesting_char()), 1..5),
    ) {
        let password = format!("Pw7{password}");
        let text = mutate(&config_text(&password, passphrase), &edits);
        // Only while the URI still marks it as a password: a mutation that deletes its `@` turns the password
        // into (part of) a host name, which no parser can tell from one.
        let still_a_password = text.contains(&format!(":{password}@"));
        if let Err(line) = check(&text)
            && still_a_password
        {
            prop_assert!(!line.contains(&password), "the password shows in: {line}");
        }
    }

    /// Out-of-range numbers anywhere are errors naming the key, never panics or huge allocations.
    #[test]
    fn extreme_numbers_are_errors_not_panics(
        key in prop::sample::select(vec!["data_shards", "parity_shards", "write_quorum", "zstd_level",
            "m_cost_kib", "t_cost", "p_cost", "interval", "lost_store_grace", "segment_size", "bandwidth",
            "format_version", "id"]),
        value in prop_oneof![Just(u64::MAX), Just(u32::MAX as u64), Just(0u64), Just(1u64 << 63), any::<u64>()],
    ) {
        let text = config_text("Pw7x", true);
        let line = text.lines().find(|l| l.starts_with(&format!("{key} ="))).unwrap().to_string();
        let edited = text.replacen(&line, &format!("{key} = {value}"), 1);
        if let Err(e) = check(&edited) {
            prop_assert!(e.contains(key) || e.contains("line "), "{key} = {value}: {e}");
        }
    }
}
