//! Quoting names for output like GNU `ls` does. On a terminal, its `shell-escape` style: a name is printed as is
//! when that is unambiguous, in single quotes when it holds shell-special characters, and as `$'...'` with escapes
//! when it holds control characters or bytes that are not UTF-8, so every printed name can be pasted back into a
//! shell. Into a pipe, printable names go out as they are (as GNU ls does, for scripts) — but unlike GNU ls, a name
//! with a control character or invalid UTF-8 is still `$'...'`-escaped there: a newline in a name must not split
//! one entry into two lines for the script reading them, nor an escape sequence reach a terminal later.

/// Characters that never need quoting (GNU ls prints them bare too).
fn is_plain(c: char) -> bool {
    c.is_alphanumeric() || "%+,-./:=@_^".contains(c)
}

/// Characters a shell interprets: quoted, but printable.
fn is_printable(c: char) -> bool {
    !c.is_control()
        && !matches!(c, '\u{200b}'..='\u{200f}' | '\u{2028}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// `name` as `ls` prints it to a terminal (`tty`) or into a pipe or file.
pub fn quote_name(name: &[u8], tty: bool) -> String {
    if !tty
        && let Ok(s) = std::str::from_utf8(name)
        && s.chars().all(is_printable)
    {
        return s.to_string();
    }
    shell_escaped(name)
}

fn shell_escaped(name: &[u8]) -> String {
    match std::str::from_utf8(name) {
        Ok(s) if !s.is_empty() && s.chars().all(is_plain) && !s.starts_with(['~', '#']) => {
            s.to_string()
        }
        Ok(s) if s.chars().all(is_printable) => single_quoted(s),
        _ => ansi_c_quoted(name),
    }
}

fn single_quoted(s: &str) -> String {
    if s.contains('\'') && !s.contains(['"', '$', '`', '\\', '!']) {
        return format!("\"{s}\"");
    }
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// Bash's `$'...'` form: C escapes for the usual control characters, three-digit octal for any other byte that
/// is not printable UTF-8.
fn ansi_c_quoted(name: &[u8]) -> String {
    let mut out = String::from("$'");
    for chunk in name.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\n' => out.push_str("\\n"),
                '\t' => out.push_str("\\t"),
                '\r' => out.push_str("\\r"),
                '\x07' => out.push_str("\\a"),
                '\x08' => out.push_str("\\b"),
                '\x0b' => out.push_str("\\v"),
                '\x0c' => out.push_str("\\f"),
                '\\' => out.push_str("\\\\"),
                '\'' => out.push_str("\\'"),
                c if is_printable(c) => out.push(c),
                c => {
                    let mut buf = [0u8; 4];
                    for b in c.encode_utf8(&mut buf).bytes() {
                        out.push_str(&format!("\\{b:03o}"));
                    }
                }
            }
        }
        for b in chunk.invalid() {
            out.push_str(&format!("\\{b:03o}"));
        }
    }
    out.push('\'');
    out
}

#[cfg(test)]
mod tests {
    use super::quote_name;

    fn tty(name: &[u8]) -> String {
        quote_name(name, true)
    }

    #[test]
    fn quotes_like_gnu_ls() {
        assert_eq!(tty(b"plain-name_1.txt"), "plain-name_1.txt");
        assert_eq!(tty("héllo".as_bytes()), "héllo");
        assert_eq!(tty(b"a b"), "'a b'");
        assert_eq!(tty(b"it's"), "\"it's\"");
        assert_eq!(tty(b"it's $x"), "'it'\\''s $x'");
        assert_eq!(tty(b"~home"), "'~home'");
        assert_eq!(tty(b"a\nb"), "$'a\\nb'");
        assert_eq!(tty(b"\x1b]0;pwned\x07"), "$'\\033]0;pwned\\a'");
        assert_eq!(tty(b"bad\xffutf8"), "$'bad\\377utf8'");
        assert_eq!(tty(b"q'\n"), "$'q\\'\\n'");
        // Bidi overrides would reorder the line on screen.
        assert_eq!(tty("a\u{202e}b".as_bytes()), "$'a\\342\\200\\256b'");
    }

    #[test]
    fn pipes_get_printable_names_raw_and_control_characters_escaped() {
        assert_eq!(quote_name(b"a b & c", false), "a b & c");
        assert_eq!(quote_name(b"a\nb", false), "$'a\\nb'");
        assert_eq!(quote_name(b"\xff", false), "$'\\377'");
    }

    #[test]
    fn no_output_contains_a_control_character() {
        for b in 0u8..=255 {
            let q = tty(&[b'x', b, b'y']);
            assert!(!q.chars().any(|c| c.is_control()), "{b:#x} -> {q:?}");
        }
    }
}
