//! A stage on the way back (the stream analysers) as a span that lasts as
//! long as the answer it reads: it ends with the answer's last step, its
//! failure, or its drop, and says whether the stage stopped it early.

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use sluice_runtime::Usage;

use crate::answer::{Answer, BoxAnswer, Step, StopNote};
use crate::telemetry::{semconv, Attribute, Stage};

pub struct StageAnswer {
    inner: BoxAnswer,
    /// `None` once ended.
    stage: Option<Stage>,
    stop: StopNote,
}

impl StageAnswer {
    pub fn wrap(inner: BoxAnswer, stage: Stage, stop: StopNote) -> BoxAnswer {
        if !stage.is_on() {
            return inner;
        }
        Box::new(Self {
            inner,
            stage: Some(stage),
            stop,
        })
    }

    fn end(&mut self) {
        if let Some(mut stage) = self.stage.take() {
            if let Some(stop) = self.stop.get() {
                stage.set(Attribute::new(semconv::SLUICE_STREAM_STOP, stop.reason));
            }
        }
    }
}

impl Answer for StageAnswer {
    fn num_choices(&self) -> usize {
        self.inner.num_choices()
    }

    fn next(&mut self) -> BoxFuture<'_, Option<Step>> {
        async move {
            let step = self.inner.next().await;
            if matches!(step, None | Some(Step::Failed(_))) {
                self.end();
            }
            step
        }
        .boxed()
    }

    fn usage(&self) -> Usage {
        self.inner.usage()
    }
}

impl Drop for StageAnswer {
    fn drop(&mut self) {
        self.end();
    }
}
