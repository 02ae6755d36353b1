//! Splitting one command line into words, the way a shell user expects: spaces or tabs
//! separate words; `"..."` quotes (with `\"` and `\\` inside) and `'...'` quotes (literal)
//! let a word hold spaces, since volume and snapshot names may. A backslash outside quotes
//! is an ordinary character and `#` starts no comment, so names keep every character the
//! naming rules allow.

/// A quote that was opened and never closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnclosedQuote {
    /// The quote character.
    pub quote: char,
    /// Byte offset of the opening quote in the line.
    pub at: usize,
}

/// Splits `line` into words (see the module comment for the rules).
pub fn split_words(line: &str) -> Result<Vec<String>, UnclosedQuote> {
    let mut words = Vec::new();
    let mut word = String::new();
    // Whether a word is under way: `""` is an empty word, not nothing.
    let mut in_word = false;
    let mut chars = line.char_indices().peekable();
    while let Some((at, c)) = chars.next() {
        match c {
            ' ' | '\t' => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        None => return Err(UnclosedQuote { quote: '"', at }),
                        Some((_, '"')) => break,
                        Some((_, '\\')) => match chars.peek() {
                            Some(&(_, next @ ('"' | '\\'))) => {
                                word.push(next);
                                chars.next();
                            }
                            _ => word.push('\\'),
                        },
                        Some((_, other)) => word.push(other),
                    }
                }
            }
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        None => return Err(UnclosedQuote { quote: '\'', at }),
                        Some((_, '\'')) => break,
                        Some((_, other)) => word.push(other),
                    }
                }
            }
            other => {
                in_word = true;
                word.push(other);
            }
        }
    }
    if in_word {
        words.push(word);
    }
    Ok(words)
}

/// Writes `word` so that [`split_words`] reads it back as one word: bare if it can be,
/// otherwise in double quotes.
pub fn quote_word(word: &str) -> String {
    let bare = !word.is_empty() && !word.contains([' ', '\t', '"', '\'']);
    if bare {
        return word.to_string();
    }
    let mut out = String::with_capacity(word.len() + 2);
    out.push('"');
    for c in word.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(s: &str) -> Vec<String> {
        split_words(s).unwrap()
    }

    #[test]
    fn splits_on_spaces_and_tabs() {
        assert_eq!(split("  create \t nightly  "), ["create", "nightly"]);
        assert!(split("   ").is_empty());
    }

    #[test]
    fn quotes_hold_spaces_and_join_with_neighbours() {
        assert_eq!(split(r#"create "my snap""#), ["create", "my snap"]);
        assert_eq!(split("create 'it''s'"), ["create", "its"]);
        assert_eq!(split(r#"repo="/a b/c" x"#), ["repo=/a b/c", "x"]);
        assert_eq!(split(r#"a "" b"#), ["a", "", "b"]);
        assert_eq!(split(r#""q\"uo\\te\n""#), [r#"q"uo\te\n"#]);
        assert_eq!(split(r"back\slash #hash"), [r"back\slash", "#hash"]);
    }

    #[test]
    fn unclosed_quote_is_reported_with_position() {
        assert_eq!(
            split_words(r#"create "oops"#),
            Err(UnclosedQuote { quote: '"', at: 7 })
        );
        assert_eq!(
            split_words("a 'b"),
            Err(UnclosedQuote { quote: '\'', at: 2 })
        );
    }

    #[test]
    fn quoting_round_trips() {
        for w in [
            "plain",
            "",
            "a b",
            "it's",
            r#"say "hi""#,
            r"back\slash",
            "tab\there",
        ] {
            assert_eq!(split(&quote_word(w)), [w], "{w:?}");
        }
        assert_eq!(quote_word("plain"), "plain");
    }
}
