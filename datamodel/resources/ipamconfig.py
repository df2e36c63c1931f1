"""IPAMConfiguration: cluster-wide IPAM knobs; a singleton named `default`, as in Calico."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from datamodel.resources.common import CalicoModel, Resource, go_bool


class IPAMConfigurationSpec(CalicoModel):
    """strictAffinity: never borrow from other nodes' blocks; maxBlocksPerHost 0 means no limit."""

    strictAffinity: bool = False
    autoAllocateBlocks: bool = True
    maxBlocksPerHost: int = Field(default=0, ge=0)


class IPAMConfiguration(Resource):
    """projectcalico.org/v3 IPAMConfiguration (cluster-scoped, name must be `default`)."""

    KIND: ClassVar[str] = "IPAMConfiguration"
    PLURAL: ClassVar[str] = "ipamconfigurations"
    ALIASES: ClassVar[tuple[str, ...]] = ("ipamconfiguration", "ipamconfigurations", "ipamconfig", "ipamconfigs")

    spec: IPAMConfigurationSpec = Field(default_factory=IPAMConfigurationSpec)

    @classmethod
    def check_name(cls, name: str) -> str | None:
        if name != "default":
            return f"must be 'default' (IPAMConfiguration is a singleton), got {name!r}"
        return None

    def ps_row(self) -> dict[str, str]:
        return {
            "NAME": self.name,
            "STRICTAFFINITY": go_bool(self.spec.strictAffinity),
            "AUTOALLOCATEBLOCKS": go_bool(self.spec.autoAllocateBlocks),
        }

    def wide_row(self) -> dict[str, str]:
        return {**self.ps_row(), "MAXBLOCKSPERHOST": str(self.spec.maxBlocksPerHost)}
