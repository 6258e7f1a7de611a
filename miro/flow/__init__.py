"""Flow-matching math: the interpolation path and its loss, samplers, and multi-reward guidance."""

from miro.flow.guidance import (
    GuidanceSchedule,
    guided_velocity_fn,
    push_targets,
    reward_targets,
    snap_to_level,
)
from miro.flow.path import flow_loss, interpolate, sample_timesteps, shift_time, velocity_target
from miro.flow.sampling import euler_step, integrate, sample_euler, time_schedule

__all__ = [
    "GuidanceSchedule",
    "euler_step",
    "flow_loss",
    "guided_velocity_fn",
    "integrate",
    "interpolate",
    "push_targets",
    "reward_targets",
    "sample_euler",
    "sample_timesteps",
    "shift_time",
    "snap_to_level",
    "time_schedule",
    "velocity_target",
]
