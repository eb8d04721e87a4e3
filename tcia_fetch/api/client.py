"""``NBIAClient``: typed async access to every NBIA v4 query and download endpoint.

One client owns one :class:`~tcia_fetch.transport.Transport` (one connection pool) and is
used as an async context manager. What a caller may rely on:

* Requests carry only parameters the endpoint allows (:mod:`tcia_fetch.api.endpoints`);
  UIDs are checked with :mod:`tcia_fetch.uid` before any URL is built (``InputError``).
* Any call whose ``collection`` is NLST (any case) goes to ``nlst_base_url``.
* Errors are mapped, never retried here: the engine owns retries and reads the error's
  class attributes.
* v4 is never sent an ``Authorization`` header. Legacy v2 gets a bearer token (guest by
  default), refreshed before expiry or once on a 401 (single-flight, see
  :mod:`tcia_fetch.api.auth`); a second 401 raises :class:`UnauthorizedError`.
* Legacy v1/v2 serve the same methods where the endpoint exists there (value lists,
  patients, studies, series, sizes, SOP UIDs, images); the v4-only ``*ValuesAndCounts``
  and ``getSeriesMetadata`` raise ``InputError`` on a legacy server.
* Every answer is parsed as it streams (:mod:`tcia_fetch.api.rowstream`), never held whole.
  :meth:`NBIAClient.iter_rows` (and the typed ``iter_series``, ``iter_updated_series``,
  ``iter_series_metadata``) hand out rows one at a time, bounded by
  ``max_streamed_body_bytes``; the list-returning methods collect from the same iterator,
  small answers (value lists, counts, sizes) bounded by ``max_body_bytes``.
* The token POST never follows a redirect (credentials are never re-sent elsewhere).
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack, aclosing, asynccontextmanager
from types import TracebackType
from typing import Literal, Self, TypedDict, TypeVar, Unpack

from tcia_fetch.api.auth import TokenManager
from tcia_fetch.api.endpoints import ENDPOINTS, ApiVersion, build_params, endpoint_url, is_nlst
from tcia_fetch.api.models import (
    PatientRow,
    SeriesMetadataRow,
    SeriesRow,
    SeriesSize,
    SopInstanceRow,
    StudyRow,
    ValueCount,
    ValueList,
    rows_to_models,
    screen_rows,
)
from tcia_fetch.api.parse import Row
from tcia_fetch.api.rowstream import row_stream_for
from tcia_fetch.config import ClientSettings
from tcia_fetch.errors import InputError, ResponseFormatError, TciaFetchError, UnauthorizedError
from tcia_fetch.transport import (
    MAX_CHUNK_SIZE_BYTES,
    QueryBody,
    StreamingResponse,
    Transport,
)
from tcia_fetch.uid import uid_problem

__all__ = ["DEFAULT_DOWNLOAD_SLOTS", "NBIAClient", "SeriesFilters"]

#: Download connections when neither the caller (a run passes its ``--concurrency``) nor the
#: config file's ``max_connections`` says otherwise.
DEFAULT_DOWNLOAD_SLOTS = 8

#: What the ``stream_*`` methods return: ``async with`` it to get a StreamingResponse.
_StreamContext = AbstractAsyncContextManager[StreamingResponse]

#: Endpoints whose answers can be large (a whole collection's series, patients, studies, a
#: series' instance UIDs): bounded by ``max_streamed_body_bytes``. Every other endpoint (value
#: lists, counts, sizes) answers a few kB and is bounded by the small ``max_body_bytes``.
_LARGE_ANSWERS = frozenset(
    {
        "getSeries",
        "getUpdatedSeries",
        "getSeriesMetadata",
        "getSOPInstanceUIDs",
        "getPatient",
        "getPatientByCollectionAndModality",
        "NewPatientsInCollection",
        "getPatientStudy",
        "NewStudiesInPatientCollection",
    }
)


def _check_uid(value: str, what: str) -> str:
    problem = uid_problem(value)
    if problem is not None:
        raise InputError(f"{problem}: {value[:80]!r}", source=what)
    return value


class SeriesFilters(TypedDict, total=False):
    """The ``getSeries`` filters, every one optional (none at all = every public series)."""

    collection: str | None
    patient_id: str | None
    study_uid: str | None
    modality: str | None
    body_part: str | None
    manufacturer: str | None
    manufacturer_model: str | None
    series_uid: str | None


class NBIAClient:
    """Async NBIA client over one HTTP session.

    Args:
        settings: where and how to connect; defaults to :class:`ClientSettings()`.
        base_url: shortcut overriding ``settings.base_url`` (derived NLST and token URLs
            follow it unless set explicitly in ``settings``).
        clock: monotonic seconds for token expiry; injectable for tests.
        download_slots: how many downloads may stream at once (a run passes its
            ``--concurrency``); beats ``settings.max_connections``. Queries always have
            connections of their own on top.
        download_read_bytes: the most one read of a download returns (a run sizes it so that
            all its streams fit one memory budget); 256 KiB by default.
    """

    def __init__(
        self,
        settings: ClientSettings | None = None,
        *,
        base_url: str | None = None,
        clock: Callable[[], float] = time.monotonic,
        download_slots: int | None = None,
        download_read_bytes: int | None = None,
    ) -> None:
        settings = settings or ClientSettings()
        if base_url is not None:
            explicit = settings.model_dump(exclude_unset=True)
            explicit["base_url"] = base_url
            settings = ClientSettings.model_validate(explicit)
        self.settings = settings
        self._clock = clock
        self._transport = Transport(
            max_connections=download_slots or settings.max_connections or DEFAULT_DOWNLOAD_SLOTS,
            connect_timeout_s=settings.connect_timeout_s,
            first_byte_timeout_s=settings.first_byte_timeout_s,
            stall_timeout_s=settings.stall_timeout_s,
            query_timeout_s=settings.query_timeout_s,
            user_agent=settings.user_agent,
            chunk_size_bytes=download_read_bytes or MAX_CHUNK_SIZE_BYTES,
            max_body_bytes=settings.max_body_bytes,
            max_streamed_body_bytes=settings.max_streamed_body_bytes,
            max_compression_ratio=settings.max_compression_ratio,
            cross_origin_redirects=settings.cross_origin_redirects,
        )
        self._token_managers: dict[str, TokenManager] = {}

    def __repr__(self) -> str:
        return f"NBIAClient(base_url={self.settings.base_url!r}, api_version={self.api_version!r})"

    async def __aenter__(self) -> Self:
        await self._transport.__aenter__()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._transport.aclose()

    @property
    def fastest_answer_s(self) -> float | None:
        """The shortest recent time to response headers (:attr:`Transport.fastest_answer_s`)."""
        return self._transport.fastest_answer_s

    @property
    def api_version(self) -> ApiVersion:
        """``v4`` or a legacy ``v2``/``v1``."""
        return self.settings.version

    # --- plumbing ------------------------------------------------------------------------

    def _base_for(self, collection: str | None) -> str:
        if is_nlst(collection):
            return self.settings.nlst_base_url or self.settings.base_url
        return self.settings.base_url

    def _token_manager(self, base: str) -> TokenManager | None:
        if self.api_version != "v2":
            return None
        token_url = self.settings.token_url or ""
        if base != self.settings.base_url:
            token_url = self.settings.nlst_token_url()
        manager = self._token_managers.get(token_url)
        if manager is None:
            manager = TokenManager(
                self._post_token_form,
                token_url=token_url,
                username=self.settings.username,
                password=self.settings.password,
                clock=self._clock,
            )
            self._token_managers[token_url] = manager
        return manager

    async def _post_token_form(self, url: str, form: Mapping[str, str]) -> bytes:
        # Never follow a redirect here: it would re-send the username and password elsewhere.
        response = await self._transport.request("POST", url, form=form, follow_redirects=False)
        return response.body

    @property
    def token_requests_made(self) -> int:
        """How many token requests this client has sent (legacy v2; 0 on v4)."""
        return sum(manager.requests_made for manager in self._token_managers.values())

    @asynccontextmanager
    async def _open_query(
        self,
        method: Literal["GET", "POST"],
        url: str,
        base: str,
        *,
        params: Mapping[str, str] | None,
        form: Mapping[str, str] | None,
        series_uid: str | None,
        max_body_bytes: int | None,
    ) -> AsyncIterator[QueryBody]:
        """A streamed query; on legacy v2 with a bearer token, refreshed once on a 401."""
        manager = self._token_manager(base)

        def opener(headers: Mapping[str, str] | None) -> AbstractAsyncContextManager[QueryBody]:
            return self._transport.stream_query(
                method,
                url,
                params=params,
                form=form,
                headers=headers,
                series_uid=series_uid,
                max_body_bytes=max_body_bytes,
            )

        async with _refreshed_once(manager, opener, series_uid) as body:
            yield body

    async def iter_rows(
        self,
        endpoint_name: str,
        params: Mapping[str, object | None],
        *,
        collection: str | None = None,
        series_uid: str | None = None,
        csv_expected: bool = False,
        max_body_bytes: int | None = None,
    ) -> AsyncGenerator[Row, None]:
        """The rows of one query, one at a time, parsed from the body as it streams.

        The generic streaming form behind every query method: memory is one chunk plus one
        row, whatever the answer's size. The body may not pass ``max_body_bytes`` (default:
        the settings' ``max_streamed_body_bytes``). A consumer that may stop early should
        close the iterator: ``async with contextlib.aclosing(client.iter_rows(...)) as rows``.
        """
        endpoint = ENDPOINTS[endpoint_name]
        base = self._base_for(collection)
        wire = build_params(endpoint, params, api_version=self.api_version)
        url = endpoint_url(base, endpoint)
        method: Literal["GET", "POST"] = "POST" if endpoint.method == "POST" else "GET"
        async with self._open_query(
            method,
            url,
            base,
            params=None if method == "POST" else wire,
            form=wire if method == "POST" else None,
            series_uid=series_uid,
            max_body_bytes=max_body_bytes,
        ) as body:
            parser = row_stream_for(body.content_type, csv_expected=csv_expected, what=endpoint_name)
            try:
                async for piece in body:
                    for row in parser.feed(piece):
                        yield row
                for row in parser.close():
                    yield row
            except ResponseFormatError as exc:
                raise ResponseFormatError(exc.message, series_uid=series_uid, url=body.url) from None
            except TciaFetchError as exc:
                exc.url = exc.url or body.url
                exc.series_uid = exc.series_uid or series_uid
                raise

    async def _query(
        self,
        endpoint_name: str,
        params: Mapping[str, object | None],
        *,
        collection: str | None = None,
        series_uid: str | None = None,
        csv_expected: bool = False,
    ) -> list[Row]:
        """Every row of one query, collected from :meth:`iter_rows` (small answers bounded small)."""
        limit = None if endpoint_name in _LARGE_ANSWERS else self.settings.max_body_bytes
        rows: list[Row] = []
        async with aclosing(
            self.iter_rows(
                endpoint_name,
                params,
                collection=collection,
                series_uid=series_uid,
                csv_expected=csv_expected,
                max_body_bytes=limit,
            )
        ) as stream:
            async for row in stream:
                rows.append(row)
        return rows

    async def _value_list(
        self, endpoint_name: str, key: str, params: Mapping[str, object | None]
    ) -> ValueList:
        collection = params.get("Collection")
        rows = await self._query(
            endpoint_name, params, collection=collection if isinstance(collection, str) else None
        )
        values: list[str | None] = []
        for row in rows:
            value = row.get(key)
            if value is None:
                values.append(None)
            elif isinstance(value, str | int | float) and not isinstance(value, bool):
                values.append(str(value))
            else:
                raise ResponseFormatError(f"{endpoint_name}: {key} is {type(value).__name__}, not text")
        return ValueList(values, rows)

    # --- value lists ---------------------------------------------------------------------

    async def collections(self) -> ValueList:
        """Collection names with public DICOM in NBIA (``getCollectionValues``)."""
        return await self._value_list("getCollectionValues", "Collection", {})

    async def modalities(self, *, collection: str | None = None, body_part: str | None = None) -> ValueList:
        """Modalities, optionally filtered (``getModalityValues``; upper-cased by the server)."""
        return await self._value_list(
            "getModalityValues", "Modality", {"Collection": collection, "BodyPartExamined": body_part}
        )

    async def body_parts(self, *, collection: str | None = None, modality: str | None = None) -> ValueList:
        """Body parts examined; ``None`` stands for the server's ``{}`` (no value)."""
        return await self._value_list(
            "getBodyPartValues", "BodyPartExamined", {"Collection": collection, "Modality": modality}
        )

    async def manufacturers(
        self, *, collection: str | None = None, modality: str | None = None, body_part: str | None = None
    ) -> ValueList:
        """Manufacturers, verbatim (odd quoting and trailing spaces kept)."""
        return await self._value_list(
            "getManufacturerValues",
            "Manufacturer",
            {"Collection": collection, "Modality": modality, "BodyPartExamined": body_part},
        )

    async def collection_counts(self) -> list[ValueCount]:
        """Patients per collection (``getCollectionValuesAndCounts``, v4 only)."""
        return rows_to_models(ValueCount, await self._query("getCollectionValuesAndCounts", {}))

    async def modality_counts(
        self, *, collection: str | None = None, body_part: str | None = None
    ) -> list[ValueCount]:
        """``getModalityValuesAndCounts`` (v4 only)."""
        params = {"Collection": collection, "BodyPartExamined": body_part}
        rows = await self._query("getModalityValuesAndCounts", params, collection=collection)
        return rows_to_models(ValueCount, rows)

    async def body_part_counts(
        self, *, collection: str | None = None, modality: str | None = None
    ) -> list[ValueCount]:
        """``getBodyPartValuesAndCounts`` (v4 only)."""
        params = {"Collection": collection, "Modality": modality}
        rows = await self._query("getBodyPartValuesAndCounts", params, collection=collection)
        return rows_to_models(ValueCount, rows)

    async def manufacturer_counts(
        self, *, collection: str | None = None, modality: str | None = None, body_part: str | None = None
    ) -> list[ValueCount]:
        """``getManufacturerValuesAndCounts`` (v4 only)."""
        params = {"Collection": collection, "Modality": modality, "BodyPartExamined": body_part}
        rows = await self._query("getManufacturerValuesAndCounts", params, collection=collection)
        return rows_to_models(ValueCount, rows)

    # --- patients and studies -------------------------------------------------------------

    async def patients(
        self, *, collection: str | None = None, patient_id: str | None = None
    ) -> list[PatientRow]:
        """``getPatient`` (note the server's ``PatientId`` spelling)."""
        rows = await self._query(
            "getPatient", {"Collection": collection, "PatientId": patient_id}, collection=collection
        )
        return rows_to_models(PatientRow, rows)

    async def patients_by_modality(self, collection: str, modality: str) -> list[PatientRow]:
        """``getPatientByCollectionAndModality``: patient ids only."""
        rows = await self._query(
            "getPatientByCollectionAndModality",
            {"Collection": collection, "Modality": modality},
            collection=collection,
        )
        return rows_to_models(PatientRow, rows)

    async def new_patients(self, collection: str, from_date: dt.date) -> list[PatientRow]:
        """``NewPatientsInCollection``: patients released on or after ``from_date``."""
        rows = await self._query(
            "NewPatientsInCollection",
            {"Collection": collection, "fromDate": from_date},
            collection=collection,
        )
        return rows_to_models(PatientRow, rows)

    async def studies(
        self, *, collection: str | None = None, patient_id: str | None = None, study_uid: str | None = None
    ) -> list[StudyRow]:
        """``getPatientStudy``."""
        if study_uid is not None:
            _check_uid(study_uid, "study UID")
        params = {"Collection": collection, "PatientID": patient_id, "StudyInstanceUID": study_uid}
        return rows_to_models(StudyRow, await self._query("getPatientStudy", params, collection=collection))

    async def new_studies(
        self, collection: str, from_date: dt.date, *, patient_id: str | None = None
    ) -> list[StudyRow]:
        """``NewStudiesInPatientCollection``: studies released on or after ``from_date``."""
        params = {"Collection": collection, "PatientID": patient_id, "fromDate": from_date}
        rows = await self._query("NewStudiesInPatientCollection", params, collection=collection)
        return rows_to_models(StudyRow, rows)

    # --- series --------------------------------------------------------------------------

    @staticmethod
    def _series_params(filters: SeriesFilters) -> dict[str, object | None]:
        study_uid, series_uid = filters.get("study_uid"), filters.get("series_uid")
        if study_uid is not None:
            _check_uid(study_uid, "study UID")
        if series_uid is not None:
            _check_uid(series_uid, "series UID")
        return {
            "Collection": filters.get("collection"),
            "PatientID": filters.get("patient_id"),
            "StudyInstanceUID": study_uid,
            "Modality": filters.get("modality"),
            "BodyPartExamined": filters.get("body_part"),
            "Manufacturer": filters.get("manufacturer"),
            "ManufacturerModelName": filters.get("manufacturer_model"),
            "SeriesInstanceUID": series_uid,
        }

    async def iter_series(
        self,
        **filters: Unpack[SeriesFilters],
    ) -> AsyncGenerator[SeriesRow, None]:
        """``getSeries`` as a stream of rows: a whole collection without holding its answer.

        Same filters as :meth:`series`. Close it when stopping early
        (``async with contextlib.aclosing(client.iter_series(...)) as rows``). A row the model
        cannot read raises ``ResponseFormatError`` at that row.
        """
        async with aclosing(self.iter_series_rows(**filters)) as rows:
            async for row in rows:
                yield SeriesRow.from_server(row)

    async def iter_series_rows(
        self,
        **filters: Unpack[SeriesFilters],
    ) -> AsyncGenerator[Row, None]:
        """``getSeries`` as a stream of raw rows, not yet validated (the planner spools these).

        The planner screens each row itself (``api.models.screen_row``) when it reads it back,
        so a row that does not fit fails its own series, not the query.
        """
        params = self._series_params(filters)
        collection, series_uid = filters.get("collection"), filters.get("series_uid")
        async with aclosing(
            self.iter_rows("getSeries", params, collection=collection, series_uid=series_uid)
        ) as rows:
            async for row in rows:
                yield row

    async def series(
        self,
        **filters: Unpack[SeriesFilters],
    ) -> list[SeriesRow]:
        """``getSeries``: every filter optional (none = every public series: large)."""
        params = self._series_params(filters)
        collection, series_uid = filters.get("collection"), filters.get("series_uid")
        rows = await self._query("getSeries", params, collection=collection, series_uid=series_uid)
        # Row by row: one broken row is set aside (``rejected_rows``) for the planner to report
        # as that series' failure, instead of failing the whole answer (issue 14).
        return screen_rows(SeriesRow, rows)

    async def iter_updated_series(self, from_date: dt.date) -> AsyncGenerator[SeriesRow, None]:
        """``getUpdatedSeries`` as a stream of rows (see :meth:`iter_series`)."""
        async with aclosing(self.iter_rows("getUpdatedSeries", {"fromDate": from_date})) as rows:
            async for row in rows:
                yield SeriesRow.from_server(row)

    async def updated_series(self, from_date: dt.date) -> list[SeriesRow]:
        """``getUpdatedSeries``: series released strictly after ``from_date``."""
        return screen_rows(SeriesRow, await self._query("getUpdatedSeries", {"fromDate": from_date}))

    def _metadata_list(self, series_uids: Sequence[str]) -> str:
        if isinstance(series_uids, str):
            raise TypeError("series_uids must be a sequence of UIDs, not one string")
        for uid in series_uids:
            _check_uid(uid, "series UID")
        return ",".join(series_uids)

    async def iter_series_metadata(
        self, series_uids: Sequence[str], *, collection: str | None = None
    ) -> AsyncGenerator[SeriesMetadataRow, None]:
        """``getSeriesMetadata`` as a stream of rows (see :meth:`series_metadata`)."""
        joined = self._metadata_list(series_uids)
        if not joined:
            return
        async with aclosing(
            self.iter_rows("getSeriesMetadata", {"list": joined}, collection=collection, csv_expected=True)
        ) as rows:
            async for row in rows:
                yield SeriesMetadataRow.from_server(row)

    async def series_metadata(
        self, series_uids: Sequence[str], *, collection: str | None = None
    ) -> list[SeriesMetadataRow]:
        """One ``getSeriesMetadata`` POST for all ``series_uids`` (the caller chunks).

        UIDs are joined with commas only (the server deletes other separators and would
        glue UIDs together). The default quoted-CSV answer is parsed. Unknown or non-public
        UIDs are simply absent from the result.
        """
        joined = self._metadata_list(series_uids)
        if not joined:
            return []
        rows = await self._query(
            "getSeriesMetadata", {"list": joined}, collection=collection, csv_expected=True
        )
        return screen_rows(SeriesMetadataRow, rows)

    async def series_size(self, series_uid: str, *, collection: str | None = None) -> SeriesSize | None:
        """``getSeriesSize``; None when the series is unknown or not public (empty body)."""
        _check_uid(series_uid, "series UID")
        rows = await self._query(
            "getSeriesSize", {"SeriesInstanceUID": series_uid}, collection=collection, series_uid=series_uid
        )
        if not rows or not rows[0]:
            return None
        return SeriesSize.from_server(rows[0])

    async def sop_instance_uids(self, series_uid: str, *, collection: str | None = None) -> list[str]:
        """``getSOPInstanceUIDs``: the series' instance UIDs, in no particular order."""
        _check_uid(series_uid, "series UID")
        rows = await self._query(
            "getSOPInstanceUIDs",
            {"SeriesInstanceUID": series_uid},
            collection=collection,
            series_uid=series_uid,
        )
        uids = []
        for model in rows_to_models(SopInstanceRow, rows):
            if model.sop_uid is None:
                raise ResponseFormatError(
                    "getSOPInstanceUIDs row without SOPInstanceUID", series_uid=series_uid
                )
            uids.append(model.sop_uid)
        return uids

    # --- downloads -----------------------------------------------------------------------

    @asynccontextmanager
    async def _open_stream(
        self,
        endpoint_name: str,
        params: Mapping[str, object | None],
        *,
        series_uid: str,
        collection: str | None,
    ) -> AsyncIterator[StreamingResponse]:
        endpoint = ENDPOINTS[endpoint_name]
        base = self._base_for(collection)
        wire = build_params(endpoint, params, api_version=self.api_version)
        url = endpoint_url(base, endpoint)
        manager = self._token_manager(base)

        def opener(headers: Mapping[str, str] | None) -> AbstractAsyncContextManager[StreamingResponse]:
            return self._transport.stream("GET", url, params=wire, series_uid=series_uid, headers=headers)

        async with _refreshed_once(manager, opener, series_uid) as response:
            yield response

    def stream_image(
        self,
        series_uid: str,
        *,
        new_file_names: bool = False,
        include_md5: bool = True,
        collection: str | None = None,
    ) -> _StreamContext:
        """Open ``getImage`` for one series: a zip streamed without Content-Length.

        ``include_md5`` asks for ``md5hashes.csv`` in the zip (v4 ``IncludeMD5=Yes``; on a
        legacy server this switches to ``getImageWithMD5Hash``, which cannot be combined
        with ``new_file_names``). Use as ``async with client.stream_image(uid) as resp:
        async for chunk in resp: ...``.
        """
        _check_uid(series_uid, "series UID")
        if self.api_version == "v4":
            params: dict[str, object | None] = {
                "SeriesInstanceUID": series_uid,
                "NewFileNames": True if new_file_names else None,
                "IncludeMD5": True if include_md5 else None,
            }
            return self._open_stream("getImage", params, series_uid=series_uid, collection=collection)
        if include_md5:
            if new_file_names:
                raise InputError("the legacy API cannot combine new file names with MD5 hashes")
            return self.stream_image_with_md5(series_uid, collection=collection)
        params = {"SeriesInstanceUID": series_uid, "NewFileNames": True if new_file_names else None}
        return self._open_stream("getImage", params, series_uid=series_uid, collection=collection)

    def stream_image_with_md5(self, series_uid: str, *, collection: str | None = None) -> _StreamContext:
        """Open ``getImageWithMD5Hash``: ``00000001.dcm…`` plus ``md5hashes.csv``, no LICENSE."""
        _check_uid(series_uid, "series UID")
        return self._open_stream(
            "getImageWithMD5Hash",
            {"SeriesInstanceUID": series_uid},
            series_uid=series_uid,
            collection=collection,
        )

    def stream_single_image(
        self, series_uid: str, sop_uid: str, *, collection: str | None = None
    ) -> _StreamContext:
        """Open ``getSingleImage``: one DICOM file (``application/dicom``)."""
        _check_uid(series_uid, "series UID")
        _check_uid(sop_uid, "SOP instance UID")
        return self._open_stream(
            "getSingleImage",
            {"SeriesInstanceUID": series_uid, "SOPInstanceUID": sop_uid},
            series_uid=series_uid,
            collection=collection,
        )


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


_Opened = TypeVar("_Opened")


@asynccontextmanager
async def _refreshed_once(
    manager: TokenManager | None,
    opener: Callable[[Mapping[str, str] | None], AbstractAsyncContextManager[_Opened]],
    series_uid: str | None,
) -> AsyncIterator[_Opened]:
    """``opener``'s context, with the bearer token on legacy v2, refreshed once on a 401.

    Queries and downloads share this: a second 401 after a fresh token means the account itself
    is refused, which no further refresh can mend.
    """
    if manager is None:
        async with opener(None) as opened:
            yield opened
        return
    token, generation = await manager.current()
    for attempt in range(2):
        stack = AsyncExitStack()
        try:
            opened = await stack.enter_async_context(opener(_bearer(token)))
        except UnauthorizedError as exc:
            await stack.aclose()
            if attempt:
                raise UnauthorizedError(
                    "HTTP 401 again after a token refresh: the account is refused",
                    status=exc.status,
                    body_excerpt=exc.body_excerpt,
                    series_uid=series_uid,
                    url=exc.url,
                ) from None
            token, generation = await manager.refresh(generation)
            continue
        async with stack:
            yield opened
        return
