/**
 * A small builder over onnx-proto's generated classes, so that `graph.ts` can read like the math it encodes:
 * `b.op('MatMul', [x, w])` instead of protobuf literals. Only what the decoder graph needs.
 */
import onnxProto from 'onnx-proto';

const { onnx } = onnxProto;
type DataType = 'float32' | 'int64' | 'uint8' | 'bool';
const ELEM: Record<DataType, number> = {
  float32: onnx.TensorProto.DataType.FLOAT,
  int64: onnx.TensorProto.DataType.INT64,
  uint8: onnx.TensorProto.DataType.UINT8,
  bool: onnx.TensorProto.DataType.BOOL,
};

/** A dimension: a fixed size or a symbolic name (batch, sequence, ...). */
export type Dim = number | string;

/** An integer attribute is a plain number; a float one is `{ f }` (1.0 must not turn into an int). */
type Attr = number | number[] | string | { f: number } | { floats: number[] } | { tensor: onnxProto.onnx.ITensorProto } | { graph: onnxProto.onnx.IGraphProto };

/** Weight data that lives outside the model proto, handed to onnxruntime as an in-memory "external file". */
export interface ExternalTensor {
  path: string;
  data: Uint8Array;
}

export class GraphBuilder {
  readonly nodes: onnxProto.onnx.INodeProto[] = [];
  readonly inputs: onnxProto.onnx.IValueInfoProto[] = [];
  readonly outputs: onnxProto.onnx.IValueInfoProto[] = [];
  readonly initializers: onnxProto.onnx.ITensorProto[] = [];
  readonly external: ExternalTensor[] = [];
  /** The initializer of each external tensor, in the same order. */
  private readonly externalInits: onnxProto.onnx.ITensorProto[] = [];
  private counter = 0;
  private usesMs = false;

  /** `prefix` keeps a subgraph's generated names apart from its parent's (names are global in a model). */
  private readonly prefix: string;
  constructor(prefix: string = '') {
    this.prefix = prefix;
  }

  /**
   * A subgraph for an If branch: `fill` adds nodes to a child builder (referring to this graph's values by
   * name) and returns the values it outputs.
   */
  subgraph(name: string, fill: (g: GraphBuilder) => { name: string; type: DataType; dims: Dim[] }[]): { graph: onnxProto.onnx.IGraphProto } {
    const g = new GraphBuilder(`${name}/`);
    const outs = fill(g);
    if (g.usesMs) this.usesMs = true;
    return { graph: { name, node: g.nodes, initializer: g.initializers, output: outs.map((o) => valueInfo(o.name, o.type, o.dims)) } };
  }

  /** Declares a graph input. */
  input(name: string, type: DataType, dims: Dim[]): string {
    this.inputs.push(valueInfo(name, type, dims));
    return name;
  }

  /** Declares a graph output under the name of an existing value. */
  output(name: string, type: DataType, dims: Dim[]): void {
    this.outputs.push(valueInfo(name, type, dims));
  }

  /** A small constant, stored inside the proto. */
  constInt64(values: number[], name?: string): string {
    const n = name ?? this.fresh('const');
    this.initializers.push({ name: n, dataType: ELEM.int64, dims: [values.length], int64Data: values });
    return n;
  }

  constFloat(values: Float32Array | number[], dims: number[], name?: string): string {
    const n = name ?? this.fresh('constf');
    const data = values instanceof Float32Array ? values : Float32Array.from(values);
    this.initializers.push({ name: n, dataType: ELEM.float32, dims, rawData: new Uint8Array(data.buffer, data.byteOffset, data.byteLength) });
    return n;
  }

  /** A float32 weight kept out of the proto (which is capped at 2 GiB): onnxruntime reads it from memory. */
  externalFloat(name: string, data: Float32Array, dims: number[]): string {
    return this.externalTensor(name, 'float32', new Uint8Array(data.buffer, data.byteOffset, data.byteLength), dims);
  }

  /** Any tensor kept out of the proto, from its raw little-endian bytes. */
  externalTensor(name: string, type: DataType, data: Uint8Array, dims: number[]): string {
    const path = `w${this.external.length}.bin`;
    this.external.push({ path, data });
    this.externalInits.push({
      name,
      dataType: ELEM[type],
      dims,
      dataLocation: onnx.TensorProto.DataLocation.EXTERNAL,
      externalData: [
        { key: 'location', value: path },
        { key: 'offset', value: '0' },
        { key: 'length', value: String(data.byteLength) },
      ],
    });
    this.initializers.push(this.externalInits.at(-1)!);
    return name;
  }

  /**
   * The model with its external tensors placed one after another in one file (`file`, beside the model), each at
   * an offset that is a multiple of `align` (so that onnxruntime maps it rather than copying it), and where each
   * tensor's bytes go.
   */
  buildWithDataFile(graphName: string, file: string, align: number): { bytes: Uint8Array; placed: { offset: number; data: Uint8Array }[] } {
    let end = 0;
    const placed = this.external.map((t, i) => {
      const offset = Math.ceil(end / align) * align;
      end = offset + t.data.byteLength;
      this.externalInits[i].externalData = [
        { key: 'location', value: file },
        { key: 'offset', value: String(offset) },
        { key: 'length', value: String(t.data.byteLength) },
      ];
      return { offset, data: t.data };
    });
    return { bytes: this.build(graphName), placed };
  }

  /** Adds one node; returns its single output's name (or the names, when `outputs` > 1). */
  op(type: string, inputs: string[], attrs: Record<string, Attr> = {}, name?: string, domain = ''): string {
    return this.opN(type, inputs, 1, attrs, name, domain)[0];
  }

  opN(type: string, inputs: string[], outputs: number, attrs: Record<string, Attr> = {}, name?: string, domain = ''): string[] {
    const base = name ?? this.fresh(type);
    const outs = outputs === 1 ? [base] : Array.from({ length: outputs }, (_, i) => `${base}:${i}`);
    if (domain === 'com.microsoft') this.usesMs = true;
    this.nodes.push({ opType: type, domain, name: base, input: inputs, output: outs, attribute: Object.entries(attrs).map(([k, v]) => attribute(k, v)) });
    return outs;
  }

  private fresh(prefix: string): string {
    return `${this.prefix}${prefix}_${this.counter++}`;
  }

  /** Serialises the model; opset 17 (LayerNormalization-era ops, Split/ReduceMean with tensor inputs). */
  build(graphName: string): Uint8Array {
    const opsetImport = [{ domain: '', version: 17 }];
    if (this.usesMs) opsetImport.push({ domain: 'com.microsoft', version: 1 });
    const model = onnx.ModelProto.create({
      irVersion: 8,
      producerName: 'sfn',
      opsetImport,
      graph: { name: graphName, node: this.nodes, input: this.inputs, output: this.outputs, initializer: this.initializers },
    });
    return onnx.ModelProto.encode(model).finish();
  }
}

function valueInfo(name: string, type: DataType, dims: Dim[]): onnxProto.onnx.IValueInfoProto {
  return {
    name,
    type: {
      tensorType: {
        elemType: ELEM[type],
        shape: { dim: dims.map((d) => (typeof d === 'number' ? { dimValue: d } : { dimParam: d })) },
      },
    },
  };
}

function attribute(name: string, v: Attr): onnxProto.onnx.IAttributeProto {
  const T = onnx.AttributeProto.AttributeType;
  if (typeof v === 'string') return { name, type: T.STRING, s: new TextEncoder().encode(v) };
  if (typeof v === 'number') return { name, type: T.INT, i: v };
  if (Array.isArray(v)) return { name, type: T.INTS, ints: v };
  if ('f' in v) return { name, type: T.FLOAT, f: v.f };
  if ('floats' in v) return { name, type: T.FLOATS, floats: v.floats };
  if ('graph' in v) return { name, type: T.GRAPH, g: v.graph };
  return { name, type: T.TENSOR, t: v.tensor };
}
