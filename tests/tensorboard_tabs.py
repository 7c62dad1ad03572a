"""What TensorBoard's tabs show of a log directory, read by TensorBoard's own plugins over its data provider:
the HPARAMS table (the hparams plugin's session groups) and the Custom Scalars layout."""

import json

from tensorboard import context
from tensorboard.backend.event_processing import data_provider, plugin_event_multiplexer
from tensorboard.plugins import base_plugin
from tensorboard.plugins.custom_scalar.custom_scalars_plugin import CustomScalarsPlugin
from tensorboard.plugins.hparams import api_pb2, backend_context, list_session_groups

STATUSES = [api_pb2.STATUS_UNKNOWN, api_pb2.STATUS_SUCCESS, api_pb2.STATUS_FAILURE, api_pb2.STATUS_RUNNING]


def tensorboard_context(logdir):
    """TensorBoard's plugin context over ``logdir`` (every run directory below it), as ``tensorboard --logdir``."""
    multiplexer = plugin_event_multiplexer.EventMultiplexer()
    multiplexer.AddRunsFromDirectory(str(logdir))
    multiplexer.Reload()
    provider = data_provider.MultiplexerDataProvider(multiplexer, str(logdir))
    return base_plugin.TBContext(logdir=str(logdir), multiplexer=multiplexer, data_provider=provider)


def hparams_rows(logdir):
    """The rows of the HPARAMS tab's table: ``{run: {"hparams": {name: value}, "metrics": {tag: value},
    "status": status}}``, from the hparams plugin's ListSessionGroups handler (the request the tab sends)."""
    request = api_pb2.ListSessionGroupsRequest(start_index=0, slice_size=1000, allowed_statuses=STATUSES)
    plugin_context = backend_context.Context(tensorboard_context(logdir))
    handler = list_session_groups.Handler(context.RequestContext(), plugin_context, "", request)
    rows = {}
    for group in handler.run().session_groups:
        hparams = {name: getattr(value, value.WhichOneof("kind")) for name, value in group.hparams.items()}
        metrics = {metric.name.tag: metric.value for metric in group.metric_values}
        rows[group.name] = {"hparams": hparams, "metrics": metrics, "status": [s.status for s in group.sessions]}
    return rows


def custom_scalars_layout(logdir):
    """The Custom Scalars tab's layout (the plugin's merged layout, as the tab receives it): ``{"category": [...]}``,
    ``{}`` when there is none."""
    plugin = CustomScalarsPlugin(tensorboard_context(logdir))
    layout = plugin.layout_impl(context.RequestContext(), "")
    return json.loads(layout) if isinstance(layout, str) else layout
