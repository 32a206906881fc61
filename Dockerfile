# veloxseg on a CPU: inference, evaluation, export and DICOM (add "train" to the extras to train in it).
#   docker build -t veloxseg .
#   docker run --rm -v "$PWD:/data" veloxseg predict -m /data/model.pt -i /data/cases -o /data/predictions
# Not built by CI: its machine reaches the package registries but not Docker Hub's base images.
FROM python:3.11-slim
WORKDIR /opt/veloxseg
COPY pyproject.toml README.md LICENSE constraints-cpu.txt ./
COPY src ./src
# the CPU build of PyTorch first, so the image never holds a multi-GB CUDA build
RUN pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cpu "torch==2.13.0" \
 && pip install --no-cache-dir -c constraints-cpu.txt ".[dicom,deploy]"
RUN useradd --create-home veloxseg
USER veloxseg
ENTRYPOINT ["veloxseg"]
CMD ["--help"]
