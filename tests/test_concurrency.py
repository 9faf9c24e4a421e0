"""Several users at once: one shared model instance serves concurrent
predictions and Grad-CAMs, each caller getting its own correct answer."""
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from core.inference.predict import Predictor
from core.data.images import load_image

N_REQUESTS = 20


def test_20_concurrent_predictions_match_a_serial_run(trained_run, data_dir):
    predictor = Predictor.from_run(trained_run)
    files = sorted((data_dir / "COVID").glob("*.png"))[:10] + sorted((data_dir / "NonCOVID").glob("*.jpg"))[:10]
    scans = [load_image(path) for path in files]

    serial = [predictor.predict_images([scan], [path.name])[0].probability for scan, path in zip(scans, files)]
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=N_REQUESTS) as pool:
        results = list(pool.map(lambda i: predictor.predict_images([scans[i]], [files[i].name])[0],
                                range(N_REQUESTS)))
    seconds = time.perf_counter() - started

    assert [r.name for r in results] == [path.name for path in files]  # nobody got someone else's answer
    np.testing.assert_allclose([r.probability for r in results], serial, atol=1e-5)
    print(f"{N_REQUESTS} concurrent predictions in {seconds:.2f} s")


def test_concurrent_gradcams_match_serial_ones(trained_run, data_dir):
    predictor = Predictor.from_run(trained_run)
    scans = [load_image(path) for path in sorted((data_dir / "COVID").glob("*.png"))[:4]]
    serial = [predictor.gradcam(scan) for scan in scans]
    with ThreadPoolExecutor(max_workers=4) as pool:
        parallel = list(pool.map(predictor.gradcam, scans))
    for one, other in zip(serial, parallel):
        np.testing.assert_allclose(one, other, atol=1e-4)
