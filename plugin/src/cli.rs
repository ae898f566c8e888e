//! The command line: kubectl's habits (`-n`, `-A`, `--context`,
//! `--kubeconfig`, `--as`, `-o table|json|yaml`, `-h`), one subcommand per
//! thing a user does. Parsing errors exit 2 (clap's usage code).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Parser, Debug)]
#[command(
    name = "kubectl-soma",
    bin_name = "kubectl soma",
    version,
    about = "SomaStack in kubectl: health, capsules, installations, drills, projects, kill switch, policy",
    after_help = "Exit codes: 0 success; 1 runtime or cluster error, or object not found; \
                  2 usage error; 3 a check failed (e.g. a bad signature, a revision its gate rejected). \
                  See docs/kubectl-soma.md."
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

/// Flags every subcommand takes, anywhere on the line (as kubectl's).
#[derive(Args, Debug, Clone, Default)]
pub struct Global {
    /// Kubeconfig file; default: $KUBECONFIG, ~/.kube/config, then in-cluster.
    #[arg(long, global = true)]
    pub kubeconfig: Option<PathBuf>,
    /// Kubeconfig context to use (default: the current context).
    #[arg(long, global = true)]
    pub context: Option<String>,
    /// Namespace (default: the context's namespace, else `default`).
    #[arg(short, long, global = true)]
    pub namespace: Option<String>,
    /// Output format.
    #[arg(short, long, global = true, value_enum, default_value_t = Output::Table)]
    pub output: Output,
    /// User to impersonate for the requests (as `kubectl --as`).
    #[arg(long = "as", global = true)]
    pub as_user: Option<String>,
    /// Group to impersonate (repeatable; as `kubectl --as-group`).
    #[arg(long = "as-group", global = true, requires = "as_user")]
    pub as_groups: Vec<String>,
}

#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum Output {
    #[default]
    Table,
    Json,
    Yaml,
}

/// Which namespaces a listing covers.
#[derive(Args, Debug, Clone, Copy, Default)]
pub struct Listing {
    /// Every namespace (otherwise the one `-n` or the context names).
    #[arg(short = 'A', long)]
    pub all_namespaces: bool,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Every SomaStack resource with its health and the condition that decides it.
    Status(Listing),
    /// Capsules: the signed payload, signing, verifying, reviewing.
    #[command(subcommand)]
    Capsule(CapsuleCommand),
    /// Installations: revision history, rollback, what changed between revisions, the regression gate.
    #[command(subcommand)]
    Installation(InstallationCommand),
    /// Disaster-recovery drills: run one now, the summary.
    #[command(subcommand)]
    Drill(DrillCommand),
    /// KAMACHIQ projects: the summary, retrying failed tasks, approving a plan, moderation.
    #[command(subcommand)]
    Project(ProjectCommand),
    /// A PolicyBundle's kill switch: stop (or let run again) what it governs.
    #[command(subcommand)]
    Killswitch(KillswitchCommand),
    /// Policy: what governs a namespace.
    #[command(subcommand)]
    Policy(PolicyCommand),
}

#[derive(Subcommand, Debug)]
pub enum CapsuleCommand {
    /// Print the canonical bytes a publisher signs for a Capsule manifest (docs/signing.md).
    Payload(ManifestArgs),
    /// Sign a Capsule manifest with a private key; print the manifest with spec.signature.
    Sign(SignArgs),
    /// Verify a Capsule's signature: a manifest file, or a Capsule in the cluster.
    Verify(VerifyArgs),
    /// Approve a Capsule, bound to the digest of its signed payload.
    Approve(ReviewArgs),
    /// Reject a Capsule, bound to the digest of its signed payload.
    Reject(ReviewArgs),
}

#[derive(Args, Debug)]
pub struct ManifestArgs {
    /// A Capsule manifest (YAML or JSON); `-` reads standard input.
    #[arg(short = 'f', long = "filename")]
    pub file: PathBuf,
}

#[derive(Args, Debug)]
pub struct SignArgs {
    #[command(flatten)]
    pub manifest: ManifestArgs,
    /// The publisher's private key (PKCS#8 PEM, as `openssl genpkey` writes
    /// it): EC P-256 signs ecdsa-p256-sha256, Ed25519 signs ed25519.
    #[arg(long)]
    pub key: PathBuf,
    /// Id of the key, as PolicyBundles list it under the publisher.
    #[arg(long)]
    pub key_id: String,
    /// Set spec.image first (must be pinned by digest, ...@sha256:...).
    #[arg(long)]
    pub image: Option<String>,
}

#[derive(Args, Debug)]
#[command(group = clap::ArgGroup::new("what").required(true).args(["name", "file"]))]
pub struct VerifyArgs {
    /// A Capsule in the cluster.
    pub name: Option<String>,
    /// A Capsule manifest (YAML or JSON); `-` reads standard input.
    #[arg(short = 'f', long = "filename")]
    pub file: Option<PathBuf>,
    /// Verify with this public key (PEM) instead of the keys the cluster's
    /// PolicyBundles trust.
    #[arg(long)]
    pub public_key: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct ReviewArgs {
    /// The Capsule.
    pub name: String,
    /// Why (recorded in the review).
    #[arg(long)]
    pub reason: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum InstallationCommand {
    /// List an Installation's revisions.
    History(NameArgs),
    /// Take an Installation back to an earlier revision (recorded as a new revision).
    Rollback(RollbackArgs),
    /// What differs between two revisions of an Installation.
    Diff(DiffArgs),
    /// The regression gate of an Installation's newest candidate revision
    /// (exit 3 when it was rejected); `--override` promotes a rejected one.
    Gate(GateArgs),
}

#[derive(Args, Debug)]
pub struct NameArgs {
    /// The object's name.
    pub name: String,
}

#[derive(Args, Debug)]
pub struct RollbackArgs {
    /// The Installation.
    pub name: String,
    /// Revision to go back to (see `history`).
    #[arg(long = "to")]
    pub to: i64,
}

#[derive(Args, Debug)]
pub struct DiffArgs {
    /// The Installation.
    pub name: String,
    /// The older revision.
    pub from: i64,
    /// The newer revision.
    pub to: i64,
}

#[derive(Args, Debug)]
pub struct GateArgs {
    /// The Installation.
    pub name: String,
    /// Promote this revision although its gate rejected it: sets the
    /// annotation somastack.io/gate-override (the revision must be the
    /// gate's rejected candidate).
    #[arg(long = "override", value_name = "REVISION", requires = "reason")]
    pub override_revision: Option<i64>,
    /// Why (with --override; recorded in somastack.io/gate-override-reason).
    #[arg(long, requires = "override_revision")]
    pub reason: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum DrillCommand {
    /// Ask for a run of a DrDrill now (the drill controller honours each request once).
    Run(NameArgs),
    /// Per Installation: pass rate, last run, median and worst RTO, failing drills.
    Summary(Listing),
}

#[derive(Subcommand, Debug)]
pub enum ProjectCommand {
    /// Projects by phase, task success rate, mean task duration.
    Summary(Listing),
    /// Run a KamachiqProject's failed tasks again (its succeeded tasks are kept).
    RetryFailed(NameArgs),
    /// Approve a KamachiqProject's plan, bound to its plan digest.
    Approve(ProjectApproveArgs),
    /// A KamachiqProject's moderation: its moderators, each decision, the
    /// refusal that stopped it (exit 3 when refused).
    Moderation(NameArgs),
}

#[derive(Args, Debug)]
pub struct ProjectApproveArgs {
    /// The KamachiqProject.
    pub name: String,
    /// Why (recorded with the review).
    #[arg(long)]
    pub reason: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum KillswitchCommand {
    /// Engage a PolicyBundle's kill switch: every governed Installation
    /// scales to zero and projects halt.
    Engage(KillswitchArgs),
    /// Release a PolicyBundle's kill switch.
    Release(ReleaseArgs),
}

#[derive(Args, Debug)]
pub struct KillswitchArgs {
    /// The PolicyBundle.
    pub bundle: String,
    /// Why (shown in the status of everything stopped).
    #[arg(long)]
    pub reason: String,
}

#[derive(Args, Debug)]
pub struct ReleaseArgs {
    /// The PolicyBundle.
    pub bundle: String,
    /// Why (replaces the engagement's reason in the bundle).
    #[arg(long)]
    pub reason: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum PolicyCommand {
    /// The effective policy of a namespace, and which PolicyBundle each rule comes from.
    Explain(ExplainArgs),
}

#[derive(Args, Debug)]
pub struct ExplainArgs {
    /// The namespace.
    pub namespace: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn kubectl_flags_go_anywhere() {
        let cli = Cli::try_parse_from([
            "kubectl-soma",
            "status",
            "-A",
            "--context",
            "c",
            "-o",
            "json",
            "--kubeconfig",
            "/k",
        ])
        .unwrap();
        assert_eq!(cli.global.output, Output::Json);
        assert_eq!(cli.global.context.as_deref(), Some("c"));
        assert!(matches!(
            cli.command,
            Command::Status(Listing { all_namespaces: true })
        ));
        let cli = Cli::try_parse_from([
            "kubectl-soma",
            "-n",
            "t1",
            "installation",
            "rollback",
            "app",
            "--to",
            "2",
        ])
        .unwrap();
        assert_eq!(cli.global.namespace.as_deref(), Some("t1"));
        assert!(matches!(
            cli.command,
            Command::Installation(InstallationCommand::Rollback(RollbackArgs { to: 2, .. }))
        ));
        let cli = Cli::try_parse_from([
            "kubectl-soma",
            "installation",
            "gate",
            "app",
            "--override",
            "4",
            "--reason",
            "the judge was wrong",
            "--as",
            "jane",
        ])
        .unwrap();
        assert_eq!(cli.global.as_user.as_deref(), Some("jane"));
        let Command::Installation(InstallationCommand::Gate(gate)) = cli.command else {
            panic!("not a gate command");
        };
        assert_eq!(
            (gate.name.as_str(), gate.override_revision, gate.reason.as_deref()),
            ("app", Some(4), Some("the judge was wrong"))
        );
    }

    #[test]
    fn usage_errors_are_exit_code_2() {
        for args in [
            vec!["kubectl-soma", "capsule", "verify"],
            vec!["kubectl-soma", "killswitch", "engage", "b"],
            vec!["kubectl-soma", "status", "-o", "xml"],
            vec!["kubectl-soma", "installation", "rollback", "app"],
            // An override says why; a reason alone overrides nothing.
            vec!["kubectl-soma", "installation", "gate", "app", "--override", "4"],
            vec!["kubectl-soma", "installation", "gate", "app", "--reason", "x"],
            vec![
                "kubectl-soma",
                "installation",
                "gate",
                "app",
                "--override",
                "four",
                "--reason",
                "x",
            ],
        ] {
            let err = Cli::try_parse_from(&args).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{args:?}");
        }
    }
}
