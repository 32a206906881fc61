"""``veloxseg demo-data``: write the synthetic PET/CT demo dataset (nnU-Net v2 format)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``demo-data`` sub-command."""
    p = sub.add_parser("demo-data", help="write a synthetic PET/CT dataset in nnU-Net v2 format",
                       description="Body-shaped CT in HU, PET in SUV with physiological uptake and 1-4 lesions "
                                   "(the label), PSF blur and noise, 4x4x6 mm voxels. Same seed, same bytes.")
    p.add_argument("output", help="dataset folder to write (dataset.json, imagesTr/, labelsTr/)")
    p.add_argument("--cases", type=int, default=20, help="training cases (default 20)")
    p.add_argument("--test-cases", type=int, default=0, help="extra held-out cases in imagesTs/labelsTs (default 0)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--dicom", action="store_true",
                   help="write DICOM studies instead: train/study_NNN/{CT,PET,SEG}, test/study_NNN/{CT,PET} and "
                        "test_labels/study_NNN.nii.gz (PET in Bq/mL with the SUV tags; needs the dicom extra)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Write the dataset and say where."""
    from ..data.demo import write_demo_dataset
    from ..errors import InputError

    if args.cases < 1 or args.test_cases < 0:
        raise InputError("--cases must be at least 1 and --test-cases at least 0")
    if args.dicom:
        from ..dicom.synthetic import write_demo_studies

        out = write_demo_studies(args.output, cases=args.cases, seed=args.seed, test_cases=args.test_cases)
        print(f"wrote {args.cases} labelled and {args.test_cases} test DICOM studies to {out}")
        return 0
    out = write_demo_dataset(args.output, cases=args.cases, seed=args.seed, test_cases=args.test_cases)
    print(f"wrote {args.cases} training and {args.test_cases} test cases to {out}")
    return 0
