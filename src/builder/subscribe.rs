//! Subscribing: one builder call per subscription (a handler, a batch handler, a projection
//! or an existing actor), each recorded with how to start its handler actors.

use std::sync::Arc;

use actix::prelude::*;

use super::{BusBuilder, Registration};
use crate::actors::handler::{Factory, HandlerActor, HandlerSetup, Load, RunsEvents};
use crate::actors::router::Partition;
use crate::actors::supervisor::SpawnArgs;
use crate::batch::{BatchHandler, Batched};
use crate::event::DomainEvent;
use crate::handler::{EventHandler, Handle, Plain, RecipientHandler};
use crate::options::HandlerOptions;
use crate::projection::{reset_on, Projection, ProjectionHandler};
use crate::storage::backend::Tx;
use crate::storage::registry::{Kind, ResetHook};

impl BusBuilder {
    /// Subscribes a handler to events of type `E` with default options. `factory` builds a
    /// handler instance per actor, and a fresh one after each panic.
    pub fn handler<E, H>(self, name: &str, factory: impl Fn() -> H + Send + Sync + 'static) -> Self
    where
        E: DomainEvent,
        H: EventHandler<E>,
    {
        self.handler_with(name, HandlerOptions::default(), factory)
    }

    /// Subscribes a handler to events of type `E` with `options`.
    pub fn handler_with<E, H>(
        self,
        name: &str,
        options: HandlerOptions,
        factory: impl Fn() -> H + Send + Sync + 'static,
    ) -> Self
    where
        E: DomainEvent,
        H: EventHandler<E>,
    {
        let factory: Factory<Plain<H>> = Arc::new(move |_partition| Plain(factory()));
        self.subscribe::<E, Plain<H>>(name, options, Kind::Handler, None, move |_| factory)
    }

    /// Subscribes a [`BatchHandler`]: it gets runs of events at once (what one handler actor
    /// has waiting, up to the mailbox capacity), with the same ordering, retries and dead
    /// letters as any handler.
    pub fn batch_handler_with<E, B>(
        self,
        name: &str,
        options: HandlerOptions,
        factory: impl Fn() -> B + Send + Sync + 'static,
    ) -> Self
    where
        E: DomainEvent,
        B: BatchHandler<E>,
    {
        let factory: Factory<Batched<E, B>> =
            Arc::new(move |_partition| Batched::<E, B>::new(factory()));
        self.subscribe::<E, Batched<E, B>>(name, options, Kind::Handler, None, move |_| factory)
    }

    /// Subscribes a [`Projection`]: its read model is written in the store's transaction
    /// together with its checkpoint (exactly-once effects). Needs a durable store; on
    /// PostgreSQL, a projection with a PostgreSQL side ([`Projection::POSTGRES`]).
    pub fn projection<E, P>(
        self,
        name: &str,
        options: HandlerOptions,
        factory: impl Fn() -> P + Send + Sync + 'static,
    ) -> Self
    where
        E: DomainEvent,
        P: Projection<E>,
    {
        let projection_name: Arc<str> = Arc::from(name);
        let partitions = options.concurrency;
        let factory = Arc::new(factory);
        let reset: Option<ResetHook> = P::RESETTABLE.then(|| {
            let factory = Arc::clone(&factory);
            Box::new(move |tx: Tx<'_>| reset_on(&mut factory(), tx)) as ResetHook
        });
        let kind = Kind::Projection;
        let mut builder =
            self.subscribe::<E, ProjectionHandler<E, P>>(name, options, kind, reset, move |args| {
                let storage = args
                    .storage
                    .clone()
                    .expect("checked in build: projections need a store");
                Arc::new(move |partition| {
                    ProjectionHandler::new(
                        factory(),
                        storage.clone(),
                        Arc::clone(&projection_name),
                        partition,
                        partitions,
                    )
                })
            });
        if let Some(registered) = builder.subscriptions.last_mut() {
            #[cfg(feature = "postgres")]
            let on_postgres = P::POSTGRES;
            #[cfg(not(feature = "postgres"))]
            let on_postgres = false;
            registered.on_postgres = on_postgres;
        }
        builder
    }

    /// Registers a subscription; `factory` is made once the bus's actors exist.
    fn subscribe<E, H>(
        mut self,
        name: &str,
        options: HandlerOptions,
        kind: Kind,
        reset: Option<ResetHook>,
        factory: impl FnOnce(&SpawnArgs) -> Factory<H> + 'static,
    ) -> Self
    where
        E: DomainEvent,
        H: RunsEvents<E>,
    {
        let name: Arc<str> = Arc::from(name);
        let retry = options.retry;
        let spawn_name = Arc::clone(&name);
        let spawn = move |args: SpawnArgs| {
            let setup = HandlerSetup {
                name: spawn_name,
                factory: factory(&args),
                retry,
                counters: args.counters,
                dead_letters: args.dead_letters,
                supervisor: args.supervisor,
                checkpoints: args.checkpoints,
                partitions: options.concurrency,
                older: Arc::clone(&args.resume.older),
                claim: None,
            };
            (0..options.concurrency)
                .map(|partition| {
                    let seen = args.resume.own.get(partition).copied().unwrap_or(0);
                    let load = Arc::new(Load::default());
                    let addr = HandlerActor::<E, H>::start_on(
                        args.threads.next(),
                        setup.clone(),
                        partition,
                        seen,
                        Arc::clone(&load),
                    );
                    Partition {
                        deliver: addr.clone().recipient(),
                        control: addr.recipient(),
                        load,
                        resume_after: seen,
                    }
                })
                .collect()
        };
        self.subscriptions.push(Registration {
            name,
            event_types: E::EVENT_TYPES,
            options,
            kind,
            reset,
            on_postgres: true,
            spawn: Box::new(spawn),
        });
        self
    }

    /// Subscribes an existing actix actor: it receives [`Handle<E>`] messages and replies
    /// `Ok` or `Err` (retried like any handler).
    pub fn recipient<E: DomainEvent>(
        self,
        name: &str,
        options: HandlerOptions,
        recipient: Recipient<Handle<E>>,
    ) -> Self {
        self.handler_with(name, options, move || RecipientHandler(recipient.clone()))
    }
}
