"""One reading of a package: the catalog refuses a tarball with more than one
package-meta-data.xml, so what it checked at upload is what every agent reads."""

from __future__ import annotations

import pytest

from repo_server.catalog.filenames import parse_filename
from repo_server.catalog.inspect import ArchiveLimits, inspect_package
from repo_server.errors import AmbiguousPackage, InvalidArtifact

from .archives import Member, PackageSpec, directory, meta_xml
from .conftest import Build

DECOY = meta_xml(name="router-nc | save overwrite /etc/ncs/ncs.conf")


@pytest.mark.parametrize(
    "decoy",
    [
        "router-nc/doc/package-meta-data.xml",  # read first by a reader that takes any depth
        "router-nc/load-dir/package-meta-data.xml",
        "router-nc/a/b/c/package-meta-data.xml",
    ],
)
@pytest.mark.parametrize("first", [True, False])
def test_a_second_package_meta_data_xml_anywhere_is_refused(
    build: Build, limits: ArchiveLimits, decoy: str, first: bool
) -> None:
    spec = PackageSpec()
    extra = [directory(decoy.rsplit("/", 1)[0]), Member(decoy, DECOY)]
    members = [*extra, *spec.members()] if first else [*spec.members(), *extra]
    with pytest.raises(AmbiguousPackage) as caught:
        inspect_package(build(spec.filename, members), parse_filename(spec.filename), limits)
    error = caught.value
    assert error.to_dict()["error"]["code"] == "ambiguous_package"
    assert isinstance(error, InvalidArtifact) and error.status == 400
    assert decoy in error.message and "router-nc/package-meta-data.xml" in error.message
    assert "rebuild the package" in error.message
    assert error.details["members"] == sorted([decoy, "router-nc/package-meta-data.xml"])


def test_a_folder_of_that_name_counts_too(build: Build, limits: ArchiveLimits) -> None:
    spec = PackageSpec()
    members = [*spec.members(), directory("router-nc/x/package-meta-data.xml")]
    with pytest.raises(AmbiguousPackage):
        inspect_package(build(spec.filename, members), parse_filename(spec.filename), limits)


def test_one_package_meta_data_xml_is_still_accepted(build: Build, limits: ArchiveLimits):
    spec = PackageSpec()
    meta = inspect_package(
        build(spec.filename, spec.members()), parse_filename(spec.filename), limits
    )
    assert (meta.name, meta.version) == ("router-nc", "1.0.2")
