//! The reference moderator (`somastack-agent moderate`, docs/agent.md,
//! docs/moderation.schema.json): a KamachiqProject's goal, each task input
//! and each output are checked against a few deterministic rules before the
//! operator goes on. Its decision is one JSON object; any moderator that
//! writes the same object (an LLM-backed one, say) can replace it.
//!
//! Rules, in order: a text over the size limit is refused; a text with a
//! control character other than line feed, carriage return and tab is
//! refused; a text containing a denied term (case-insensitive, on word
//! boundaries) is refused, naming the term found first in the text;
//! anything else is allowed. A stage the moderator is not set to check is
//! allowed as not moderated.

use serde::{Deserialize, Serialize};

/// The default `MODERATION_MAX_BYTES`.
pub const DEFAULT_MAX_BYTES: usize = 16 * 1024;
/// The largest `MODERATION_MAX_BYTES` accepted.
pub const MAX_MAX_BYTES: usize = 1024 * 1024;

/// What is checked (`SOMASTACK_MODERATION_STAGE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    /// A project's goal, before it is planned.
    Goal,
    /// A task's input, before its Job.
    Input,
    /// A task's output, before it is accepted.
    Output,
}

impl Stage {
    pub const ALL: [Stage; 3] = [Stage::Goal, Stage::Input, Stage::Output];

    pub fn as_str(&self) -> &'static str {
        match self {
            Stage::Goal => "goal",
            Stage::Input => "input",
            Stage::Output => "output",
        }
    }

    /// `goal`, `input` or `output`; `what` names the setting in errors.
    pub fn parse(what: &str, value: &str) -> Result<Stage, String> {
        Stage::ALL
            .into_iter()
            .find(|s| s.as_str() == value.trim())
            .ok_or_else(|| format!("{what}={value:?} is not one of goal, input, output"))
    }
}

/// The moderator's settings (the project's `moderation.config`, as
/// environment variables).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// `MODERATION_DENY`: the denied terms, as configured.
    pub deny: Vec<String>,
    /// `MODERATION_MAX_BYTES`: the largest text allowed.
    pub max_bytes: usize,
    /// `MODERATION_STAGES`: the stages checked; others are allowed.
    pub stages: Vec<Stage>,
}

impl Settings {
    /// From the environment, `var` giving a variable's value.
    pub fn from_env(var: impl Fn(&str) -> Option<String>) -> Result<Settings, String> {
        let deny = deny_terms(&var("MODERATION_DENY").unwrap_or_default());
        let max_bytes = match var("MODERATION_MAX_BYTES").as_deref().map(str::trim) {
            None | Some("") => DEFAULT_MAX_BYTES,
            Some(v) => v
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=MAX_MAX_BYTES).contains(n))
                .ok_or_else(|| {
                    format!("MODERATION_MAX_BYTES={v:?} is not a whole number from 1 to {MAX_MAX_BYTES}")
                })?,
        };
        let stages = match var("MODERATION_STAGES") {
            Some(v) if !v.trim().is_empty() => list(&v)
                .map(|s| Stage::parse("MODERATION_STAGES", s))
                .collect::<Result<Vec<_>, _>>()?,
            _ => Stage::ALL.to_vec(),
        };
        Ok(Settings {
            deny,
            max_bytes,
            stages,
        })
    }
}

/// Items separated by commas or line breaks, trimmed, empty ones dropped.
fn list(text: &str) -> impl Iterator<Item = &str> {
    text.split([',', '\n']).map(str::trim).filter(|s| !s.is_empty())
}

/// `MODERATION_DENY`: terms separated by commas or line breaks, trimmed,
/// empty ones dropped.
pub fn deny_terms(text: &str) -> Vec<String> {
    list(text).map(str::to_string).collect()
}

/// Allow or Refuse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Decision {
    Allow,
    Refuse,
}

/// The moderator's answer, the contract's one JSON object
/// (docs/moderation.schema.json).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Answer {
    pub decision: Decision,
    pub stage: Stage,
    pub reason: String,
}

/// The decision on `text` at `stage`.
pub fn moderate(settings: &Settings, stage: Stage, text: &str) -> Answer {
    let name = stage.as_str();
    let answer = |decision, reason: String| Answer {
        decision,
        stage,
        reason,
    };
    if !settings.stages.contains(&stage) {
        return answer(Decision::Allow, "stage not moderated".into());
    }
    if text.len() > settings.max_bytes {
        return answer(
            Decision::Refuse,
            format!(
                "{name} is {} bytes, over the limit of {}",
                text.len(),
                settings.max_bytes
            ),
        );
    }
    if let Some((at, c)) = text
        .char_indices()
        .find(|(_, c)| c.is_control() && !matches!(c, '\n' | '\r' | '\t'))
    {
        return answer(
            Decision::Refuse,
            format!(
                "{name} contains the control character U+{:04X} at byte {at}",
                c as u32
            ),
        );
    }
    if let Some(term) = first_denied(text, &settings.deny) {
        return answer(
            Decision::Refuse,
            format!("{name} contains the denied term {:?}", crate::truncate(term, 100)),
        );
    }
    answer(Decision::Allow, "no rule matched".into())
}

/// A character of a word: a letter, a digit or `_` (as a regex's `\w`).
fn word_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// `text` as terms are matched in it: lower case, every run of white space
/// one space (a term of several words matches across a line break).
fn normalize(text: &str) -> Vec<char> {
    let mut out: Vec<char> = Vec::with_capacity(text.len());
    for c in text.chars().flat_map(char::to_lowercase) {
        if c.is_whitespace() {
            if out.last().is_some_and(|l| *l != ' ') {
                out.push(' ');
            }
        } else {
            out.push(c);
        }
    }
    if out.last() == Some(&' ') {
        out.pop();
    }
    out
}

/// Where `term` (normalized) first occurs in `text` (normalized) as whole
/// words: an end of the term that is a word character must not touch
/// another word character ("drop" is not in "dropdown").
fn find(text: &[char], term: &[char]) -> Option<usize> {
    let (first, last) = (*term.first()?, *term.last()?);
    if term.len() > text.len() {
        return None;
    }
    (0..=text.len() - term.len()).find(|&i| {
        text[i..i + term.len()] == *term
            && !(word_char(first) && i > 0 && word_char(text[i - 1]))
            && !(word_char(last) && text.get(i + term.len()).is_some_and(|c| word_char(*c)))
    })
}

/// The denied term that occurs first in `text` (on a tie, the one listed
/// first), as configured.
pub fn first_denied<'a>(text: &str, terms: &'a [String]) -> Option<&'a str> {
    let text = normalize(text);
    terms
        .iter()
        .filter_map(|t| find(&text, &normalize(t)).map(|at| (at, t.as_str())))
        .min_by_key(|(at, _)| *at)
        .map(|(_, t)| t)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(deny: &str) -> Settings {
        Settings {
            deny: deny_terms(deny),
            max_bytes: DEFAULT_MAX_BYTES,
            stages: Stage::ALL.to_vec(),
        }
    }

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string())
    }

    #[test]
    fn deny_lists_split_on_commas_and_lines() {
        assert_eq!(
            deny_terms(" drop table, exfiltrate\n\n , rm -rf \r\n"),
            vec!["drop table", "exfiltrate", "rm -rf"]
        );
        assert!(deny_terms(" , \n").is_empty());
    }

    #[test]
    fn terms_match_whole_words_whatever_their_case() {
        let terms = deny_terms("drop");
        assert_eq!(first_denied("Please DROP the table.", &terms), Some("drop"));
        assert_eq!(first_denied("drop", &terms), Some("drop"));
        assert_eq!(first_denied("a drop-in replacement", &terms), Some("drop"));
        assert_eq!(first_denied("Open the dropdown menu.", &terms), None);
        assert_eq!(first_denied("raindrop", &terms), None);
        assert_eq!(first_denied("drop_table", &terms), None);
        assert_eq!(first_denied("", &terms), None);
    }

    #[test]
    fn a_term_of_several_words_matches_across_white_space() {
        let terms = deny_terms("customer records");
        assert_eq!(
            first_denied("Export all Customer\n   Records now", &terms),
            Some("customer records")
        );
        assert_eq!(first_denied("customer recordset", &terms), None);
        // Edges that are not word characters need no boundary.
        let terms = deny_terms("rm -rf /");
        assert_eq!(first_denied("then run rm -rf /tmp", &terms), Some("rm -rf /"));
    }

    #[test]
    fn the_term_found_first_in_the_text_is_named() {
        let terms = deny_terms("secret, password");
        assert_eq!(
            first_denied("the password is not a secret", &terms),
            Some("password")
        );
        // Same place: the one listed first.
        let terms = deny_terms("leak, leak data");
        assert_eq!(first_denied("leak data now", &terms), Some("leak"));
    }

    #[test]
    fn rules_apply_in_order() {
        let s = Settings {
            max_bytes: 20,
            ..settings("secret")
        };
        let refuse = |stage, text: &str| {
            let a = moderate(&s, stage, text);
            assert_eq!(a.decision, Decision::Refuse, "{a:?}");
            assert_eq!(a.stage, stage);
            a.reason
        };
        assert_eq!(
            refuse(Stage::Goal, "a secret goal that is far too long"),
            "goal is 34 bytes, over the limit of 20"
        );
        assert_eq!(
            refuse(Stage::Input, "secret\u{7}"),
            "input contains the control character U+0007 at byte 6"
        );
        assert_eq!(
            refuse(Stage::Output, "a Secret."),
            "output contains the denied term \"secret\""
        );
        let allowed = moderate(&s, Stage::Output, "line one\r\n\tline two");
        assert_eq!(
            allowed,
            Answer {
                decision: Decision::Allow,
                stage: Stage::Output,
                reason: "no rule matched".into()
            }
        );
        // Exactly at the limit is allowed; empty text too.
        assert_eq!(
            moderate(&s, Stage::Goal, &"a".repeat(20)).decision,
            Decision::Allow
        );
        assert_eq!(moderate(&s, Stage::Goal, "").decision, Decision::Allow);
    }

    #[test]
    fn a_stage_not_moderated_is_allowed() {
        let s = Settings {
            stages: vec![Stage::Output],
            ..settings("secret")
        };
        let a = moderate(&s, Stage::Goal, "a secret\u{0}");
        assert_eq!(a.decision, Decision::Allow);
        assert_eq!(a.reason, "stage not moderated");
        assert_eq!(moderate(&s, Stage::Output, "a secret").decision, Decision::Refuse);
    }

    #[test]
    fn settings_from_the_environment() {
        let s = Settings::from_env(env(&[])).unwrap();
        assert_eq!(s, settings(""));
        let s = Settings::from_env(env(&[
            ("MODERATION_DENY", "a, b"),
            ("MODERATION_MAX_BYTES", "100"),
            ("MODERATION_STAGES", "output,\ngoal"),
        ]))
        .unwrap();
        assert_eq!(s.deny, vec!["a", "b"]);
        assert_eq!(s.max_bytes, 100);
        assert_eq!(s.stages, vec![Stage::Output, Stage::Goal]);
        assert_eq!(
            Settings::from_env(env(&[("MODERATION_MAX_BYTES", "lots")])),
            Err("MODERATION_MAX_BYTES=\"lots\" is not a whole number from 1 to 1048576".to_string())
        );
        assert!(Settings::from_env(env(&[("MODERATION_MAX_BYTES", "0")])).is_err());
        assert_eq!(
            Settings::from_env(env(&[("MODERATION_STAGES", "goal,plan")])),
            Err("MODERATION_STAGES=\"plan\" is not one of goal, input, output".to_string())
        );
        assert_eq!(
            Stage::parse("SOMASTACK_MODERATION_STAGE", "review"),
            Err("SOMASTACK_MODERATION_STAGE=\"review\" is not one of goal, input, output".to_string())
        );
    }

    #[test]
    fn a_long_denied_term_is_cut_in_the_reason() {
        let term = "x".repeat(300);
        let a = moderate(&settings(&term), Stage::Goal, &term);
        assert_eq!(a.decision, Decision::Refuse);
        assert!(a.reason.len() < 140, "{}", a.reason);
    }
}
