"""``veloxseg dataset-from-dicom``: a folder of DICOM studies into an nnU-Net v2 raw dataset."""

from __future__ import annotations

import argparse
import logging


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``dataset-from-dicom`` sub-command."""
    p = sub.add_parser(
        "dataset-from-dicom", help="convert a folder of DICOM studies into an nnU-Net raw dataset",
        description="Each study (StudyInstanceUID) becomes a case <prefix>_NNN: its series matched to the channels "
                    "by modality, PET converted to body-weight SUV, all on the CT grid, written as "
                    "imagesTr/<case>_XXXX.nii.gz (studies with a label) or imagesTs/ (without). Labels: a DICOM-SEG "
                    "in the study (referencing the CT), or LABELS/<study folder name>.nii.gz. study_to_case.csv "
                    "maps studies to cases; no patient identifier goes into a file name.")
    p.add_argument("studies", help="folder of studies (one sub-folder per study, series in any sub-folders)")
    p.add_argument("output", help="dataset folder to create (e.g. Dataset900_MyPETCT)")
    p.add_argument("--channels", nargs="+", default=["CT", "PET"],
                   help="channel names in order; each names a modality (CT, PET, MR) (default: CT PET)")
    p.add_argument("--labels", default=None,
                   help="folder of label maps <study folder name>.nii.gz on the CT grid (default: a DICOM-SEG "
                        "in each study)")
    p.add_argument("--label-names", nargs="+", default=None,
                   help="names of labels 1, 2, ... (default: the DICOM-SEG's segment labels, else 'lesion')")
    p.add_argument("--prefix", default="case", help="case id prefix (default: case -> case_000, case_001, ...)")
    p.add_argument("--pet-units", choices=("SUVbw", "BQML"), default="SUVbw",
                   help="PET values to train on: body-weight SUV from the header, or Bq/mL as stored (default: SUVbw)")
    p.add_argument("--skip-invalid", action="store_true",
                   help="skip studies that cannot be converted (listed in the CSV) instead of stopping")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Convert and print what was written."""
    from ..dicom.dataset import MAPPING_FILE, convert_studies

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    s = convert_studies(args.studies, args.output, args.channels, args.labels, args.label_names, args.prefix,
                        args.skip_invalid, args.pet_units)
    print(f"wrote {len(s.training)} labelled case(s) to imagesTr/labelsTr and {len(s.test)} without labels to "
          f"imagesTs in {s.output}; labels: {', '.join(s.label_names)}")
    if s.skipped:
        print(f"skipped {len(s.skipped)} study(ies) that could not be converted (see {MAPPING_FILE})")
    print(f"study -> case mapping: {s.output / MAPPING_FILE} (it links cases to studies: keep it private)")
    return 0
