"""The Keras sub-model as a TensorFlow graph function (``keras``), and XLA-compiled (``xla``)."""

from __future__ import annotations

import time

import numpy as np

from beam_pipeline.engines import Context, Engine, as_arrays

# Before calibration has measured a compile, a new batch shape stays on the graph function until the
# time spent on it there reaches this many seconds (about one XLA compile of a small model).
DEFAULT_COMPILE_BUDGET_S = 0.5


def _submodel(ctx: Context):
    if ctx.submodel is None:
        from beam_pipeline import recurrent

        ctx.submodel = recurrent.build_submodel(ctx.model, ctx.layer, ctx.mode)
    return ctx.submodel


def _call(ctx: Context):
    """The step run on a padded batch: one-hot built inside for one-hot models, then the sub-model."""
    import tensorflow as tf

    submodel = _submodel(ctx)

    def call(x):
        if ctx.one_hot_depth:
            real = tf.cast(tf.not_equal(x, 0), ctx.model_dtype)[..., None]
            x = tf.one_hot(x, ctx.one_hot_depth, dtype=ctx.model_dtype) * real
        return submodel(x, training=False)

    return call


def _spec(ctx: Context):
    import tensorflow as tf

    if ctx.text_input:
        return [tf.TensorSpec([None, *ctx.input_shape], tf.string)]
    # Untrimmed batches are always maxlen wide: a static time axis, which TimeDistributed (it loops over
    # the static time axis, over the batch when that is unknown) and unroll=True need.
    width = None if ctx.trimmed else ctx.maxlen
    return [tf.TensorSpec([None, width], tf.dtypes.as_dtype(ctx.input_dtype))]


def graph_function(ctx: Context):
    """The traced graph function, shared by the engines of one Embedder (traced once per shape)."""
    if "graph_fn" not in ctx.extra:
        import keras

        if keras.backend.backend() != "tensorflow":
            submodel = _submodel(ctx)
            eye = None
            if ctx.one_hot_depth:
                eye = np.eye(ctx.one_hot_depth, dtype=ctx.model_dtype)
                eye[0] = 0
            ctx.extra["graph_fn"] = lambda x: submodel.predict_on_batch(x if eye is None else eye[x])
        else:
            import tensorflow as tf

            ctx.extra["graph_fn"] = tf.function(_call(ctx), input_signature=_spec(ctx), reduce_retracing=True)
    return ctx.extra["graph_fn"]


class KerasEngine(Engine):
    """The sub-model as one TensorFlow graph function: Keras' own kernels, any batch shape."""

    name = "keras"

    def __init__(self, ctx: Context):
        super().__init__(ctx)
        self._fn = graph_function(ctx)

    def run(self, batch: np.ndarray) -> list[np.ndarray]:
        return as_arrays(self._fn(batch))


class XlaEngine(Engine):
    """The same function XLA-compiled, once per batch shape, with ski rental: a shape not yet
    compiled runs on the graph function until the time spent on it there reaches the compile cost
    measured at calibration; then it is compiled. Rare shapes never pay for a compile."""

    name = "xla"

    @classmethod
    def why_not(cls, ctx: Context) -> str | None:
        import keras

        if keras.backend.backend() != "tensorflow":
            return "XLA needs the TensorFlow backend"
        if ctx.device != "cpu":
            return "on a GPU the cuDNN kernel is the fast path, and XLA would lose it"
        if ctx.text_input:
            return "XLA has no string ops (the model tokenizes raw text)"
        if not ctx.jit:
            return "--jit off"
        return None

    def __init__(self, ctx: Context):
        super().__init__(ctx)
        import tensorflow as tf

        self._graph_fn = graph_function(ctx)
        self._xla_fn = tf.function(_call(ctx), input_signature=_spec(ctx), jit_compile=True)
        self.compile_budget_s = DEFAULT_COMPILE_BUDGET_S
        self._graph_seconds: dict[tuple, float] = {}
        self._compiled: set[tuple] = set()

    def warm_up(self, batch: np.ndarray) -> list[np.ndarray]:
        """Compiles for the batch's shape (the calibration batch is worth compiling)."""
        self._compiled.add(batch.shape)
        return as_arrays(self._xla_fn(batch))

    def rent_until_compiled(self, startup_s: float) -> None:
        """Sets the ski-rental budget to the compile cost measured at calibration."""
        self.compile_budget_s = max(float(startup_s), 0.0)

    def run(self, batch: np.ndarray) -> list[np.ndarray]:
        shape = batch.shape
        if shape in self._compiled:
            return as_arrays(self._xla_fn(batch))
        spent = self._graph_seconds.get(shape, 0.0)
        if spent >= self.compile_budget_s:
            self._compiled.add(shape)
            return as_arrays(self._xla_fn(batch))
        start = time.perf_counter()
        outputs = as_arrays(self._graph_fn(batch))
        self._graph_seconds[shape] = spent + time.perf_counter() - start
        return outputs
