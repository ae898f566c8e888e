//! The reference agent's computation, as pure functions: extractive
//! summarization of real text, and what a KamachiqProject task makes of its
//! input and its dependencies' outputs. No I/O here; `main.rs` is the shell
//! (HTTP server, task runner).
//!
//! The summary is deterministic: sentences are scored by how frequent their
//! content words are in the whole text (longer sentences do not win by
//! length: the score is a mean), the best are kept, in their original order.
//!
//! [`evaluate`] is the evaluation gate's computation (an Installation
//! upgrade's candidate against its baseline), [`moderate`] the moderation
//! capsule's (a KamachiqProject's goal, inputs and outputs), [`http1`] the
//! plain HTTP/1.1 the evaluator speaks.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

pub mod evaluate;
pub mod http1;
pub mod moderate;
#[cfg(test)]
mod schemas;

pub use evaluate::EVAL_CORPUS;

/// The most a KamachiqProject task's result may hold: the kubelet keeps at
/// most 4096 bytes of a container's termination message.
pub const MAX_OUTPUT_BYTES: usize = 4096;
/// The most sentences a summary may be asked for.
pub const MAX_SENTENCES: usize = 50;
/// The largest text the service summarizes (HTTP body limit).
pub const MAX_TEXT_BYTES: usize = 1024 * 1024;

const STOPWORDS: &[&str] = &[
    "about", "after", "again", "also", "and", "any", "are", "because", "been", "before", "being", "between",
    "both", "but", "can", "could", "did", "does", "doing", "down", "each", "few", "for", "from", "further",
    "had", "has", "have", "having", "her", "here", "hers", "him", "his", "how", "into", "its", "itself",
    "just", "more", "most", "not", "now", "off", "once", "only", "other", "our", "ours", "out", "over",
    "own", "same", "she", "should", "some", "such", "than", "that", "the", "their", "them", "then", "there",
    "these", "they", "this", "those", "through", "too", "under", "until", "very", "was", "were", "what",
    "when", "where", "which", "while", "who", "whom", "why", "will", "with", "would", "you", "your", "yours",
];

/// The sentences of `text`: split after `.`, `!` or `?` followed by white
/// space, and at line breaks; trimmed, empty ones dropped.
pub fn sentences(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    for line in text.lines() {
        let mut start = 0;
        let bytes = line.as_bytes();
        for (i, c) in line.char_indices() {
            if matches!(c, '.' | '!' | '?') {
                let next = i + c.len_utf8();
                if next >= bytes.len() || line[next..].starts_with(char::is_whitespace) {
                    out.push(line[start..next].trim());
                    start = next;
                }
            }
        }
        out.push(line[start..].trim());
    }
    out.retain(|s| !s.is_empty());
    out
}

/// The content words of a sentence: lower case, letters and digits, at least
/// three characters, no stop words.
pub fn words(sentence: &str) -> Vec<String> {
    sentence
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| w.chars().count() >= 3)
        .map(str::to_lowercase)
        .filter(|w| !STOPWORDS.contains(&w.as_str()))
        .collect()
}

/// One sentence of a source, with its score.
#[derive(Debug, Clone, PartialEq)]
pub struct Scored {
    pub source: usize,
    pub position: usize,
    pub text: String,
    pub score: f64,
}

/// Scores every sentence of every source by the mean frequency, over all
/// sources together, of its content words.
pub fn score(sources: &[&str]) -> Vec<Scored> {
    let split: Vec<Vec<&str>> = sources.iter().map(|s| sentences(s)).collect();
    let mut freq: HashMap<String, usize> = HashMap::new();
    for sentence in split.iter().flatten() {
        for w in words(sentence) {
            *freq.entry(w).or_default() += 1;
        }
    }
    let mut out = Vec::new();
    for (source, list) in split.iter().enumerate() {
        for (position, sentence) in list.iter().enumerate() {
            let ws = words(sentence);
            let score = if ws.is_empty() {
                0.0
            } else {
                ws.iter().map(|w| freq[w] as f64).sum::<f64>() / ws.len() as f64
            };
            out.push(Scored {
                source,
                position,
                text: (*sentence).to_string(),
                score,
            });
        }
    }
    out
}

/// The best `max` sentences of `text`, in their original order.
pub fn summarize(text: &str, max: usize) -> Vec<String> {
    combine(&[text], max)
}

/// The best `max` sentences over several sources, taking the best remaining
/// sentence of each source in turn (so every source that has a sentence is
/// represented), then in source and original order.
pub fn combine(sources: &[&str], max: usize) -> Vec<String> {
    let scored = score(sources);
    let mut per_source: Vec<Vec<&Scored>> = vec![Vec::new(); sources.len()];
    for s in &scored {
        per_source[s.source].push(s);
    }
    for list in &mut per_source {
        // Best first; ties go to the earlier sentence.
        list.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.position.cmp(&b.position)));
        list.reverse(); // pop() takes the best
    }
    let mut chosen: Vec<&Scored> = Vec::new();
    while chosen.len() < max && per_source.iter().any(|l| !l.is_empty()) {
        for list in &mut per_source {
            if chosen.len() == max {
                break;
            }
            if let Some(s) = list.pop() {
                chosen.push(s);
            }
        }
    }
    chosen.sort_by_key(|s| (s.source, s.position));
    chosen.into_iter().map(|s| s.text.clone()).collect()
}

/// The first `max` sentences of `text`, in order: what a naive summarizer
/// answers (`AGENT_METHOD=lead`, a plausible regressed release).
pub fn lead(text: &str, max: usize) -> Vec<String> {
    sentences(text)
        .into_iter()
        .take(max)
        .map(str::to_string)
        .collect()
}

/// How the service summarizes (`AGENT_METHOD`): `scored` (the default,
/// [`summarize`]) or `lead` ([`lead`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Scored,
    Lead,
}

impl Method {
    pub fn parse(value: Option<&str>) -> Result<Method, String> {
        match value.map(str::trim) {
            None | Some("") | Some("scored") => Ok(Method::Scored),
            Some("lead") => Ok(Method::Lead),
            Some(other) => Err(format!("AGENT_METHOD={other:?} is not one of scored, lead")),
        }
    }

    pub fn summarize(&self, text: &str, max: usize) -> Vec<String> {
        match self {
            Method::Scored => summarize(text, max),
            Method::Lead => lead(text, max),
        }
    }
}

/// A duration as a user writes it: `2s`, `500ms`, or a number of seconds,
/// from `min` to `max` inclusive; `what` names the setting in errors.
pub fn parse_duration(what: &str, text: &str, min: Duration, max: Duration) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit_ms) = if let Some(n) = text.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1000.0)
    } else {
        (text, 1000.0)
    };
    let value: f64 = number
        .trim()
        .parse()
        .map_err(|_| format!("{what} {text:?} is not a duration such as 2s or 500ms"))?;
    let ms = value * unit_ms;
    let (lo, hi) = (min.as_secs_f64() * 1000.0, max.as_secs_f64() * 1000.0);
    if !ms.is_finite() || !(lo..=hi).contains(&ms) {
        return Err(format!(
            "{what} {text:?} must be between {} and {}",
            human_ms(min),
            human_ms(max)
        ));
    }
    Ok(Duration::from_millis(ms as u64))
}

/// `300s`, `1ms`, `0s`: how [`parse_duration`] names its bounds.
fn human_ms(d: Duration) -> String {
    let ms = d.as_millis();
    if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

/// `AGENT_DELAY`: how long the service waits before answering each
/// summarization (a slow release); unset or empty is none.
pub fn parse_delay(value: Option<&str>) -> Result<Duration, String> {
    match value.map(str::trim) {
        None | Some("") => Ok(Duration::ZERO),
        Some(v) => parse_duration("AGENT_DELAY", v, Duration::ZERO, Duration::from_secs(300)),
    }
}

/// Why a task produced no result.
#[derive(Debug, Clone, PartialEq)]
pub enum TaskError {
    /// Nothing to work on: no input and no dependency output.
    NoText,
    /// The agent was configured to fail (`AGENT_FAIL`).
    Configured(String),
    /// The result does not fit a termination message.
    TooLarge(usize),
}

impl std::fmt::Display for TaskError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TaskError::NoText => write!(f, "the task has no input and no dependency output to work on"),
            TaskError::Configured(why) => write!(f, "{why}"),
            TaskError::TooLarge(n) => write!(
                f,
                "the result is {n} bytes; a task's result holds at most {MAX_OUTPUT_BYTES} bytes"
            ),
        }
    }
}

/// How the agent is told to fail (the capsule's `AGENT_FAIL` environment
/// variable): `always`, or `first-attempt`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailMode {
    Never,
    Always,
    FirstAttempt,
}

impl FailMode {
    pub fn parse(value: Option<&str>) -> Result<FailMode, String> {
        match value.map(str::trim) {
            None | Some("") | Some("never") => Ok(FailMode::Never),
            Some("always") => Ok(FailMode::Always),
            Some("first-attempt") => Ok(FailMode::FirstAttempt),
            Some(other) => Err(format!(
                "AGENT_FAIL={other:?} is not one of never, always, first-attempt"
            )),
        }
    }
}

/// What a task computes: a summary of `max` sentences of its input and its
/// dependencies' outputs together (each dependency represented), as lines.
/// `dependencies` maps a dependency's task name to its accepted output.
pub fn run_task(
    input: &str,
    dependencies: &BTreeMap<String, String>,
    attempt: u32,
    fail: FailMode,
    max: usize,
) -> Result<String, TaskError> {
    match fail {
        FailMode::Always => {
            return Err(TaskError::Configured(format!(
                "attempt {attempt} failed: this agent is configured to fail (AGENT_FAIL=always)"
            )));
        }
        FailMode::FirstAttempt if attempt <= 1 => {
            return Err(TaskError::Configured(format!(
                "attempt {attempt} failed: this agent is configured to fail its first attempt (AGENT_FAIL=first-attempt)"
            )));
        }
        _ => {}
    }
    let mut sources: Vec<&str> = Vec::new();
    if !input.trim().is_empty() {
        sources.push(input);
    }
    sources.extend(
        dependencies
            .values()
            .map(String::as_str)
            .filter(|s| !s.trim().is_empty()),
    );
    if sources.is_empty() {
        return Err(TaskError::NoText);
    }
    let out = combine(&sources, max.clamp(1, MAX_SENTENCES)).join("\n");
    if out.len() > MAX_OUTPUT_BYTES {
        return Err(TaskError::TooLarge(out.len()));
    }
    Ok(out)
}

/// A review's verdict on an output: accepted when it is non-empty and every
/// line of it is a sentence of the text it was made from (an extractive
/// summary invents nothing).
pub fn review(output: &str, sources: &[&str]) -> Result<(), String> {
    if output.trim().is_empty() {
        return Err("the output is empty".into());
    }
    let known: Vec<&str> = sources.iter().flat_map(|s| sentences(s)).collect();
    for line in output.lines().filter(|l| !l.trim().is_empty()) {
        if !known.contains(&line.trim()) {
            return Err(format!(
                "the output says something its inputs do not: {:?}",
                truncate(line, 80)
            ));
        }
    }
    Ok(())
}

/// `s` cut to at most `max` characters, `...` marking a cut.
pub(crate) fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_string(),
    }
}

/// When the service reports ready (`AGENT_READY`): `always` (the default),
/// `never` (a release whose readiness check never passes), or `after:<s>`
/// seconds after it started.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Readiness {
    Always,
    Never,
    AfterSeconds(f64),
}

impl Readiness {
    pub fn parse(value: Option<&str>) -> Result<Readiness, String> {
        match value.map(str::trim) {
            None | Some("") | Some("always") => Ok(Readiness::Always),
            Some("never") => Ok(Readiness::Never),
            Some(v) => match v.strip_prefix("after:").map(str::parse::<f64>) {
                Some(Ok(s)) if s.is_finite() && s >= 0.0 => Ok(Readiness::AfterSeconds(s)),
                _ => Err(format!(
                    "AGENT_READY={v:?} is not one of always, never, after:<seconds>"
                )),
            },
        }
    }

    pub fn ready(&self, uptime_seconds: f64) -> bool {
        match self {
            Readiness::Always => true,
            Readiness::Never => false,
            Readiness::AfterSeconds(s) => uptime_seconds >= *s,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ARTICLE: &str = "Solar capacity in Europe grew quickly in 2025. \
        Grid operators added storage to absorb solar peaks. \
        The weather was mild. \
        Storage and solar together cut evening prices. \
        A cat sat on a mat.";

    #[test]
    fn sentences_split_at_terminators_and_lines() {
        assert_eq!(
            sentences("One. Two!  Three? 3.14 is pi\nfour"),
            vec!["One.", "Two!", "Three?", "3.14 is pi", "four"]
        );
        assert!(sentences(" \n\n ").is_empty());
    }

    #[test]
    fn the_sentences_about_the_main_topic_win_and_keep_their_order() {
        assert_eq!(
            summarize(ARTICLE, 2),
            vec![
                "Grid operators added storage to absorb solar peaks.",
                "Storage and solar together cut evening prices."
            ]
        );
        // Deterministic.
        assert_eq!(summarize(ARTICLE, 2), summarize(ARTICLE, 2));
        assert_eq!(summarize(ARTICLE, 10).len(), 5);
    }

    #[test]
    fn combining_takes_from_every_source() {
        let wind =
            "Wind farms in the North Sea set a record. Offshore wind output doubled. Ferries ran late.";
        let got = combine(&[ARTICLE, wind], 2);
        assert_eq!(got.len(), 2);
        assert!(sentences(ARTICLE).contains(&got[0].as_str()), "{got:?}");
        assert!(sentences(wind).contains(&got[1].as_str()), "{got:?}");
    }

    #[test]
    fn a_task_summarizes_its_input_with_its_dependencies_outputs() {
        let deps = BTreeMap::from([
            (
                "summarize-a".to_string(),
                "Solar output rose. Storage grew.".to_string(),
            ),
            (
                "summarize-b".to_string(),
                "Wind output fell. Wind prices rose.".to_string(),
            ),
        ]);
        let out = run_task("", &deps, 1, FailMode::Never, 2).unwrap();
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(
            ["Solar output rose.", "Storage grew."].contains(&lines[0]),
            "{out}"
        );
        assert!(
            ["Wind output fell.", "Wind prices rose."].contains(&lines[1]),
            "{out}"
        );
        assert_eq!(
            run_task(" ", &BTreeMap::new(), 1, FailMode::Never, 2),
            Err(TaskError::NoText)
        );
    }

    #[test]
    fn configured_failures() {
        let deps = BTreeMap::new();
        assert!(matches!(
            run_task(ARTICLE, &deps, 3, FailMode::Always, 2),
            Err(TaskError::Configured(_))
        ));
        assert!(run_task(ARTICLE, &deps, 1, FailMode::FirstAttempt, 2).is_err());
        assert!(run_task(ARTICLE, &deps, 2, FailMode::FirstAttempt, 2).is_ok());
        assert_eq!(FailMode::parse(Some("first-attempt")), Ok(FailMode::FirstAttempt));
        assert!(FailMode::parse(Some("sometimes")).is_err());
    }

    #[test]
    fn a_result_too_large_for_a_termination_message_is_an_error() {
        let long = format!("{}.", "solar ".repeat(900));
        assert_eq!(
            run_task(&long, &BTreeMap::new(), 1, FailMode::Never, 1),
            Err(TaskError::TooLarge(long.len()))
        );
    }

    #[test]
    fn a_review_accepts_only_sentences_of_the_inputs() {
        let out = summarize(ARTICLE, 2).join("\n");
        assert_eq!(review(&out, &[ARTICLE]), Ok(()));
        assert!(review("Solar is bad.", &[ARTICLE]).is_err());
        assert!(review("", &[ARTICLE]).is_err());
    }

    #[test]
    fn the_lead_method_keeps_the_first_sentences() {
        assert_eq!(
            lead(ARTICLE, 2),
            vec![
                "Solar capacity in Europe grew quickly in 2025.",
                "Grid operators added storage to absorb solar peaks."
            ]
        );
        assert_eq!(Method::parse(None), Ok(Method::Scored));
        assert_eq!(Method::parse(Some(" lead ")), Ok(Method::Lead));
        assert_eq!(Method::Scored.summarize(ARTICLE, 2), summarize(ARTICLE, 2));
        let err = Method::parse(Some("random")).unwrap_err();
        assert_eq!(err, "AGENT_METHOD=\"random\" is not one of scored, lead");
    }

    #[test]
    fn delays_read_as_users_write_them() {
        assert_eq!(parse_delay(None), Ok(Duration::ZERO));
        assert_eq!(parse_delay(Some("")), Ok(Duration::ZERO));
        assert_eq!(parse_delay(Some("30s")), Ok(Duration::from_secs(30)));
        assert_eq!(parse_delay(Some("500ms")), Ok(Duration::from_millis(500)));
        assert_eq!(parse_delay(Some("2")), Ok(Duration::from_secs(2)));
        assert_eq!(parse_delay(Some("0")), Ok(Duration::ZERO));
        assert_eq!(
            parse_delay(Some("301s")),
            Err("AGENT_DELAY \"301s\" must be between 0s and 300s".to_string())
        );
        assert!(parse_delay(Some("-1s")).is_err());
        assert!(parse_delay(Some("soon")).is_err());
    }

    #[test]
    fn readiness_settings() {
        assert_eq!(Readiness::parse(None), Ok(Readiness::Always));
        assert!(!Readiness::parse(Some("never")).unwrap().ready(1e9));
        let after = Readiness::parse(Some("after:5")).unwrap();
        assert!(!after.ready(4.9) && after.ready(5.0));
        assert!(Readiness::parse(Some("after:-1")).is_err());
        assert!(Readiness::parse(Some("later")).is_err());
    }
}
