"""The platform: ``Nexus``, deployments, deploy functions, security; servers load lazily."""

from .app import Nexus
from .deploy import (
    DeploymentChannels,
    deploy_as_api,
    deploy_as_cli,
    deploy_as_mcp,
    deploy_multi_channel,
    deploy_with_sessions,
)
from .deployment import Deployment, Execution

__all__ = [
    "Nexus",
    "Deployment",
    "Execution",
    "DeploymentChannels",
    "deploy_as_api",
    "deploy_as_cli",
    "deploy_as_mcp",
    "deploy_multi_channel",
    "deploy_with_sessions",
]
