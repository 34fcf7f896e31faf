"""The cluster launcher form: generated from the site's profiles, checked as you type.

Every change re-validates the request against the chosen profile (the same
`PartitionProfile.check` that guards submission) and shows the reason when it does
not fit; the preview shows the job script a pilot would be submitted with. Start,
scale and stop act on the session's pilots for that profile.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import ipywidgets as w

from htc_notebook.errors import HTCError
from htc_notebook.runtime.plan import render_pilot
from htc_notebook.spec import Resources

if TYPE_CHECKING:
    from htc_notebook.runtime.parts import Parts


class ClusterLauncher(w.VBox):
    """Profile, nodes, cores, GPUs, memory, walltime; live validation; script preview; start/scale/stop."""

    def __init__(self, parts: "Parts"):
        self.parts = parts
        names = parts.site.names()
        self.profile = w.Dropdown(options=names, value=parts.site.default_profile, description="profile")
        self.nodes = w.BoundedIntText(value=1, min=1, max=10_000, description="nodes")
        self.cores = w.BoundedIntText(value=1, min=1, max=100_000, description="cores")
        self.gpus = w.BoundedIntText(value=0, min=0, max=1_000, description="GPUs")
        self.memory = w.Text(value="", placeholder="e.g. 4G (per node)", description="memory")
        self.walltime = w.Text(value="", placeholder="e.g. 01:00:00", description="walltime")
        self.jobs = w.BoundedIntText(value=1, min=0, max=1_000, description="pilot jobs")
        self.status = w.HTML()
        self.preview = w.Textarea(layout=w.Layout(width="100%", height="180px"), disabled=True)
        self.start = w.Button(description="Start", button_style="success")
        self.scale = w.Button(description="Scale")
        self.stop = w.Button(description="Stop", button_style="warning")
        self.start.on_click(lambda _: self._act("start"))
        self.scale.on_click(lambda _: self._act("scale"))
        self.stop.on_click(lambda _: self._act("stop"))
        for field in (self.profile, self.nodes, self.cores, self.gpus, self.memory, self.walltime):
            field.observe(lambda _: self.validate(), names="value")
        super().__init__([self.profile, w.HBox([self.nodes, self.cores, self.gpus]),
                          w.HBox([self.memory, self.walltime, self.jobs]), self.status, self.preview,
                          w.HBox([self.start, self.scale, self.stop])])
        self.validate()

    def request(self) -> Resources:
        """The form as a Resources (raises SpecError naming the field)."""
        return Resources(nodes=self.nodes.value, cores=self.cores.value, gpus=self.gpus.value,
                         memory=self.memory.value.strip() or None, walltime=self.walltime.value.strip() or None)

    def validate(self) -> bool:
        """Check the form against the profile; show the reason, or the script preview."""
        prof = self.parts.site.profile(self.profile.value)
        try:
            prof.resolve(self.request())
        except HTCError as exc:
            self.status.value = f"<span style='color:#c62828'>&#10007; {_escape(str(exc))}</span>"
            for b in (self.start, self.scale):
                b.disabled = True
            self.valid = False
            return False
        limits = (f"{prof.name}: {prof.cores_per_node} cores, {prof.memory_per_node} MiB, "
                  f"{prof.gpus_per_node} GPUs per node, up to {prof.max_nodes} nodes")
        self.status.value = f"<span style='color:#2e7d32'>&#10003; fits ({_escape(limits)})</span>"
        for b in (self.start, self.scale):
            b.disabled = prof.backend == "local" and b is self.scale
        self.preview.value = render_pilot(prof)
        self.valid = True
        return True

    def _act(self, action: str) -> None:
        if action != "stop" and not self.validate():
            return
        prof = self.parts.site.profile(self.profile.value)
        try:
            if action == "stop":
                self.parts.backends.stop(prof.name)
                self.status.value = f"stopped {prof.name}"
            elif prof.backend == "local":
                local: Any = self.parts.backends.get(prof)  # a LocalBackend (ui/ does not import backends/)
                client = local.client
                self.status.value = f"local cluster running: <a href='{client.dashboard_link}'>dashboard</a>"
            else:
                self.parts.backends.scale(prof.name, self.jobs.value)
                self.status.value = f"{prof.name}: {self.jobs.value} pilot job(s) requested"
        except HTCError as exc:
            self.status.value = f"<span style='color:#c62828'>{_escape(str(exc))}</span>"




def _escape(text: str) -> str:
    import html

    return html.escape(text)
