//! `actorbus replay`: move a handler's checkpoints back (or forward) with no bus running, so
//! that at its next start the handler processes the events after that position again.

use std::path::PathBuf;

use clap::Args;

use super::dlq::known_handler;
use super::events::open_existing;

#[derive(Debug, Args)]
pub(crate) struct ReplayArgs {
    /// The store whose checkpoints to move: a SQLite file, or `postgres://…`.
    #[arg(long, value_name = "PATH")]
    db: PathBuf,
    /// The handler (subscription name) to replay.
    #[arg(long, value_name = "NAME")]
    handler: String,
    /// The handler processes every event after this global position again (0: all of them).
    #[arg(long, value_name = "POS", default_value_t = 0, value_parser = crate::cli::position())]
    from: u64,
}

pub(crate) fn run(args: ReplayArgs) -> anyhow::Result<()> {
    replay(&args)
}

fn replay(args: &ReplayArgs) -> anyhow::Result<()> {
    let store = open_existing(&args.db)?;
    known_handler(&store, &args.handler)?;
    let head = store.head()?;
    anyhow::ensure!(
        args.from <= head,
        "position {} is past the head of the log ({head}): nothing to replay",
        args.from
    );
    let before: Vec<_> = store
        .checkpoints()?
        .into_iter()
        .filter(|c| c.handler == args.handler)
        .collect();
    anyhow::ensure!(
        !before.is_empty(),
        "`{}` has dead letters but no checkpoint yet: it has nothing to replay",
        args.handler
    );
    match store.replay(&args.handler, args.from)? {
        actorbus::Replay::Rebuild => say!(
            "{} is a projection: at its next start it resets its read model and applies the \
             whole log again (head {head})",
            args.handler
        ),
        actorbus::Replay::Moved(moved) => {
            for c in &before {
                say!(
                    "{} partition {}/{}: checkpoint {} -> {}",
                    args.handler,
                    c.partition,
                    c.partitions,
                    c.position,
                    args.from
                );
            }
            say!(
                "moved {moved} checkpoint(s): at its next start {} processes the events after position {} (head {head}) again",
                args.handler, args.from
            );
        }
        _ => {}
    }
    Ok(())
}
