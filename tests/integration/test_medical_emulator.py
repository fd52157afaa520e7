"""The emulator's MedImageParse 3D route over HTTP, and the 3-D client against it."""

from __future__ import annotations

import gzip
import json

import httpx
import nibabel as nib
import numpy as np
import pybase64
import pytest
from pydantic import SecretStr

from emulator.config import EmulatorConfig
from medparse.endpoint.client3d import make_client_3d
from medparse.endpoint.errors import EndpointRejectedInput
from medparse.endpoint.limiter import make_in_flight_limiter
from medparse.endpoint.protocol import ScoreRow
from medparse.settings import Settings
from tests.support import medical_files as mf
from tests.support.emulator_server import running_emulator

KEY = "k3d"
HEADERS = {"Authorization": f"Bearer {KEY}", "azureml-model-deployment": "medimageparse-3d"}


def body(image: bytes, text: str, rows: int = 1) -> dict[str, object]:
    row = [pybase64.b64encode_as_string(image), text]
    return {"input_data": {"columns": ["image", "text"], "index": [0] * rows, "data": [row] * rows}}


def test_the_3d_deployment_answers_a_label_volume_with_the_input_geometry() -> None:
    upload = mf.synthetic_ct_volume((32, 28, 4))
    with running_emulator(EmulatorConfig(keys=[KEY])) as base:
        resp = httpx.post(f"{base}/score", json=body(upload, "liver & tumor"), headers=HEADERS, timeout=30)
        assert resp.status_code == 200 and resp.headers["azureml-model-deployment"] == "medimageparse-3d"
        (item,) = resp.json()
        blob = pybase64.b64decode(json.loads(item["nifti_file"])["data"])
        assert blob[:2] == b"\x1f\x8b"
        labels = nib.Nifti1Image.from_bytes(gzip.decompress(blob))
        source = nib.Nifti1Image.from_bytes(gzip.decompress(upload))
        assert labels.shape == source.shape and np.allclose(labels.affine, source.affine)
        assert set(np.unique(np.asarray(labels.dataobj))) <= {0, 1, 2} and np.asarray(labels.dataobj).any()
        for bad, rows in ((mf.skimage_file("camera.png"), 1), (upload, 2), (b"\x1f\x8bnot gzip", 1)):
            refused = httpx.post(f"{base}/score", json=body(bad, "liver", rows), headers=HEADERS, timeout=30)
            assert refused.status_code == 424 and refused.headers["ms-azureml-model-error-statuscode"] == "400"


def test_the_image_features_variant_and_the_client_parse_the_same_masks() -> None:
    upload = mf.nifti_file("anatomical.nii")
    with running_emulator(EmulatorConfig(keys=[KEY], output_3d="image_features")) as base:
        settings = Settings(endpoint_scoring_uri=f"{base}/score", endpoint_key=SecretStr(KEY))
        client = make_client_3d(settings, make_in_flight_limiter(settings, None, lease_s=5), None)
        assert client is not None
        with client:
            (row,) = client.score([ScoreRow(upload, ["brain", "ventricle"])], job_id="t").rows
        assert row.masks.shape == (2, 33, 41, 25) and row.labels[0]
        with pytest.raises(EndpointRejectedInput):
            client_again = make_client_3d(settings, make_in_flight_limiter(settings, None, lease_s=5), None)
            assert client_again is not None
            with client_again:
                client_again.score([ScoreRow(mf.skimage_file("camera.png"), ["brain"])], job_id="t")
