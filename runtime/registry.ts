/**
 * Which module each machine lives in, as a node knows it: the definitions it was given
 * (`machines: [checkout]`), then an optional `resolve(name, version)` hook for the rest.
 */
import { ValidationError } from './errors.js';
import { type AnyMachine, isMachineDefinition, machineKey } from './machine.js';

export type ResolveModule = (name: string, version: number) => string | undefined;

export class MachineRegistry {
  readonly #byKey = new Map<string, AnyMachine>();
  readonly #resolve: ResolveModule | undefined;

  constructor(machines: readonly unknown[], resolve?: ResolveModule) {
    machines.forEach((def, i) => {
      if (!isMachineDefinition(def)) {
        throw new ValidationError(
          'invalid_input',
          `machines[${i}]`,
          'is not a defineMachine/defineJob definition',
        );
      }
      const key = machineKey(def.name, def.version);
      const existing = this.#byKey.get(key);
      if (existing && existing !== def) {
        throw new ValidationError(
          'invalid_input',
          `machines[${i}]`,
          `${def.name} version ${def.version} is registered twice`,
        );
      }
      this.#byKey.set(key, def);
    });
    this.#resolve = resolve;
  }

  get definitions(): AnyMachine[] {
    return [...this.#byKey.values()];
  }

  /** The definition of `name@version` given to this node, if any. */
  definitionOf(name: string, version: number): AnyMachine | undefined {
    return this.#byKey.get(machineKey(name, version));
  }

  /** The module URL a worker imports `name@version` from, or undefined when unknown. */
  moduleOf(name: string, version: number): string | undefined {
    return this.#byKey.get(machineKey(name, version))?.module ?? this.#resolve?.(name, version);
  }
}
