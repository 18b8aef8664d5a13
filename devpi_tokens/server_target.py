"""What a request acts on: its project and indexes, read as devpi-server reads them.

A restriction is only as good as our agreement with devpi-server about
which project and which index a request touches.  So nothing here parses a
request its own way: every value comes from the same accessor, in the same
order, as the devpi-server view that will run (``devpi_server.views``,
``pushrelease`` and ``submit`` for the index POST routes):

- ``request.POST.get(":action")`` set: a form submit (upload, register,
  doc upload); the project is ``request.POST["name"]`` (webob's MultiDict
  answers the *last* of repeated fields, for devpi and for us alike).
- otherwise a push: ``request.json_body`` (webob decodes with the charset of
  the Content-Type, whatever its media type says); the project is its
  ``name``, the target index its ``targetindex``.

Where the body cannot be read the way devpi will read it, the target says
so (``unreadable``) and every write is refused; a project or index we cannot
name never passes as "no project".
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING
from typing import Any


if TYPE_CHECKING:
    from pyramid.request import Request


#: Longest push body we read; real ones are a few hundred bytes.
MAX_PUSH_BODY = 64 * 1024

INDEX_POST_ROUTES = frozenset({"/{user}/{index}", "/{user}/{index}/"})
INDEX_POST_METHODS = frozenset({"POST", "PUSH"})
FILE_ROUTES = frozenset({"/{user}/{index}/+f/{relpath:.*}", "/{user}/{index}/+e/{relpath:.*}"})


class UnreadableBody(Exception):
    """A request body devpi-server would act on but we cannot read as it does."""


@dataclass(frozen=True)
class Target:
    """The project and the indexes (``user/index``) a request acts on.

    ``unreadable`` is the reason the body could not be read the way
    devpi-server reads it; such a request may only read.
    """

    project: str | None
    indexes: tuple[str, ...]
    unreadable: str | None = None
    #: what a POST to an index does: its form's ``:action`` ("file_upload",
    #: "doc_upload", "submit") or "push"; None otherwise
    action: str | None = None


def _matched(value: Any) -> str | None:
    # devpi's own context strips trailing slashes from matchdict values
    if isinstance(value, str):
        value = value.rstrip("/")
        return value or None
    return None


def has_body_target(request: Request) -> bool:
    """True for the requests whose project or index comes from the body."""
    route = getattr(request.matched_route, "name", None)
    return route in INDEX_POST_ROUTES and request.method in INDEX_POST_METHODS


def route_target(request: Request) -> Target:
    """The project and index a request's route names (nothing else is read)."""
    matchdict = request.matchdict or {}
    user, index = _matched(matchdict.get("user")), _matched(matchdict.get("index"))
    indexes = (f"{user}/{index}",) if user and index else ()
    return Target(_matched(matchdict.get("project")), indexes)


def request_target(request: Request) -> Target:
    """The project and the indexes a request acts on."""
    routed = route_target(request)
    project, indexes = routed.project, routed.indexes
    if has_body_target(request):
        try:
            name, target, action = body_target(request)
        except UnreadableBody as exc:
            return Target(None, indexes, unreadable=str(exc))
        if target is not None:
            indexes = (*indexes, target)
        return Target(name, indexes, action=action)
    route = getattr(request.matched_route, "name", None)
    if route in FILE_ROUTES and request.method not in ("GET", "HEAD"):
        project = project or _file_project(request)
    return Target(project, indexes)


def body_target(request: Request) -> tuple[str | None, str | None, str]:
    """``(project, target index, action)`` of a POST/PUSH to an index, as devpi reads it.

    Raises :class:`UnreadableBody` with the reason when devpi's own reading
    would fail or yield something that is not text.
    """
    try:
        form = request.POST
        action = form.get(":action")
    except Exception as exc:  # noqa: BLE001 - whatever webob raises, refuse
        raise UnreadableBody(f"the form cannot be read ({_why(exc)})") from None
    finally:
        _rewind(request)
    if action is not None and not isinstance(action, str):
        # a file part: devpi's own truth test on it raises
        raise UnreadableBody("the form's ':action' field is not text")
    if action:
        # devpi's submit view: the form decides, the body is not JSON
        return _submitted_name(form, action), None, action
    return (*_push_target(request), "push")


def _submitted_name(form: Any, action: str) -> str | None:
    name = form.get("name")
    if name is not None and not isinstance(name, str):
        raise UnreadableBody("the form's 'name' field is not text")
    if action in ("file_upload", "doc_upload"):
        # what devpi's submit takes without checking (it fails with a 500)
        if not name:
            raise UnreadableBody(f"an {action} needs a 'name' field")
        if action == "file_upload" and not isinstance(form.get("version"), str):
            raise UnreadableBody("a file_upload needs a 'version' field")
        if not hasattr(form.get("content"), "filename"):
            raise UnreadableBody(f"an {action} needs its 'content' as a file")
    return name or None


def _push_target(request: Request) -> tuple[str, str | None]:
    length = request.content_length
    if length is not None and length > MAX_PUSH_BODY:
        raise UnreadableBody(f"a push body is limited to {MAX_PUSH_BODY} bytes")
    if len(request.body) > MAX_PUSH_BODY:
        raise UnreadableBody(f"a push body is limited to {MAX_PUSH_BODY} bytes")
    try:
        data = request.json_body
    except RecursionError:
        raise UnreadableBody("the JSON body is nested too deeply") from None
    except Exception as exc:  # noqa: BLE001 - bad JSON, unknown charset, ...
        raise UnreadableBody(f"the body is not JSON devpi can read ({_why(exc)})") from None
    if not isinstance(data, dict):
        raise UnreadableBody("a push body must be a JSON object")
    name, version = data.get("name"), data.get("version")
    if not isinstance(name, str) or not name or not isinstance(version, str):
        raise UnreadableBody("a push body needs 'name' and 'version' as text")
    target = data.get("targetindex")
    if target is not None and not isinstance(target, str):
        raise UnreadableBody("'targetindex' must be text")
    if target is None and not isinstance(data.get("posturl"), str):
        # devpi's push to another server reads 'posturl' without checking
        raise UnreadableBody("a push needs 'targetindex' (or 'posturl' for another server)")
    return name, target


def _rewind(request: Request) -> None:
    # webob leaves a parsed form's body read to its end; whoever reads the
    # raw body next (devpi relaying a request) must find all of it
    if request.is_body_seekable:
        request.body_file_raw.seek(0)


def _why(exc: BaseException) -> str:
    # only the type: the message may quote the body
    return type(exc).__name__


def _file_project(request: Request) -> str | None:
    # changing a file (tox result upload, deletion) acts on its project
    xom = request.registry["xom"]
    entry = xom.filestore.get_file_entry(request.path_info.strip("/"))
    project = getattr(entry, "project", None) if entry is not None else None
    return project if isinstance(project, str) else None
